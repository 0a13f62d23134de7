//! Finding tracefs and reading tracepoint `format` files.
//!
//! The kernel programs read tracepoint records as raw bytes. A record's layout is not a stable
//! ABI: fields get added (`reason` on `tcp_send_reset` in 6.10, `err` on `tcp_retransmit_skb` in
//! 6.17) and the ones after them move. Every tracepoint describes its own layout in
//! `events/<category>/<name>/format` under tracefs, so tcptrace reads the offsets from there at
//! load time instead of compiling in the layout of one kernel. Sizes are checked too: an offset is
//! only meaningful if the field still has the width the kernel program reads.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

/// `f_type` that `statfs(2)` reports for tracefs (`TRACEFS_MAGIC` in `linux/magic.h`).
const TRACEFS_MAGIC: i128 = 0x7472_6163;

/// Where tracefs lives: its own mount point (Linux >= 4.1), then the older location inside
/// debugfs (which automounts tracefs there when it is first looked at).
const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The oldest kernel tcptrace runs on, for error messages. Every tracepoint it attaches to exists
/// since 4.16; the BPF ring buffer (5.8) is what sets the bar.
const MIN_KERNEL: &str = "5.8";

/// A mounted tracefs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFs {
    root: PathBuf,
}

impl TraceFs {
    /// Finds a mounted tracefs: `/sys/kernel/tracing`, then `/sys/kernel/debug/tracing`, each
    /// accepted only if `statfs` says it is tracefs (an unmounted `/sys/kernel/tracing` is an empty
    /// sysfs directory). If neither is, mounts tracefs on `/sys/kernel/tracing`.
    ///
    /// The `bool` is true when this call did the mounting, so the caller can unmount it when done.
    pub fn locate_or_mount() -> Result<(TraceFs, bool)> {
        if let Some(root) = CANDIDATES.iter().map(Path::new).find(|p| is_tracefs(p)) {
            return Ok((TraceFs::at(root), false));
        }
        let target = CANDIDATES[0];
        mount_tracefs(target).map_err(|e| {
            anyhow!(
                "tracefs is not mounted and mounting it failed ({e}): \
                 run `mount -t tracefs tracefs {target}` as root"
            )
        })?;
        Ok((TraceFs::at(target), true))
    }

    /// A tracefs rooted at `root`, taken on trust (tests point this at a directory tree).
    pub fn at(root: impl Into<PathBuf>) -> TraceFs {
        TraceFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<TracepointFormat> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Tracepoints come and go between kernel versions and configurations: say which one
            // is missing rather than just "No such file or directory".
            Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
                "tracepoint {category}/{name} does not exist on this kernel ({} missing); \
                 tcptrace needs Linux >= {MIN_KERNEL} built with CONFIG_EVENT_TRACING=y",
                path.display()
            ),
            Err(e) => bail!("cannot read {}: {e}", path.display()),
        };
        // Name the file: the parse error only knows the tracepoint.
        TracepointFormat::parse(category, name, &text)
            .map_err(|e| anyhow!("{e} (in {})", path.display()))
    }
}

/// Whether `path` is the root of a tracefs mount (false if it does not exist).
fn is_tracefs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain old data, for which all-zero bytes are a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable `statfs`, both alive for
    // the whole call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) };
    // `f_type`'s integer type differs between architectures and C libraries; widen losslessly.
    rc == 0 && i128::from(stat.f_type) == TRACEFS_MAGIC
}

/// `mount("tracefs", target, "tracefs", 0, NULL)`.
fn mount_tracefs(target: &str) -> io::Result<()> {
    let target = CString::new(target).map_err(io::Error::other)?;
    // SAFETY: every pointer is a NUL-terminated string alive for the whole call; tracefs takes no
    // mount data, so NULL is allowed.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One tracepoint's record layout, as its `format` file describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracepointFormat {
    pub category: String,
    pub name: String,
    /// The tracepoint's event id (`ID:` line), if the file has one.
    pub id: Option<u32>,
    /// In file order, `common_*` fields included.
    fields: Vec<FieldDesc>,
}

/// One `field:` line of a `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDesc {
    pub name: String,
    /// The declaration without the field name and array length: `const void *`, `__u8`,
    /// `enum sk_rst_reason`, `__data_loc char[]`.
    pub c_type: String,
    /// Byte offset from the start of the record (the `common_*` header included).
    pub offset: u16,
    /// Size in bytes (the whole array for arrays).
    pub size: u16,
    pub signed: bool,
    /// `N` of a trailing `[N]`; `None` for scalars and for lengths that are not a plain number.
    pub array_len: Option<u32>,
}

impl TracepointFormat {
    /// Parses the text of a `format` file. Lines other than `ID:` and `field:` (the `name:` line,
    /// blank separators) are skipped, and parsing stops at `print fmt:`, whose free text could
    /// otherwise be mistaken for fields.
    pub fn parse(category: &str, name: &str, text: &str) -> Result<Self> {
        let mut id = None;
        let mut fields: Vec<FieldDesc> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            let context = |msg: String| {
                anyhow!(
                    "tracepoint {category}/{name}: malformed format file, line {}: {msg}",
                    index + 1
                )
            };
            if let Some(value) = line.strip_prefix("ID:") {
                let value = value.trim();
                id = Some(
                    value
                        .parse()
                        .map_err(|_| context(format!("bad ID `{value}`")))?,
                );
            } else if line.starts_with("field:") {
                let field = parse_field(line).map_err(context)?;
                if fields.iter().any(|f| f.name == field.name) {
                    return Err(context(format!("field `{}` appears twice", field.name)));
                }
                fields.push(field);
            } else if line.starts_with("print fmt:") {
                break;
            }
        }
        if fields.is_empty() {
            bail!("tracepoint {category}/{name}: format file has no `field:` lines (truncated?)");
        }
        Ok(TracepointFormat {
            category: category.to_owned(),
            name: name.to_owned(),
            id,
            fields,
        })
    }

    /// All fields, in record order.
    pub fn fields(&self) -> &[FieldDesc] {
        &self.fields
    }

    pub fn field(&self, name: &str) -> Option<&FieldDesc> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Offset of a field the kernel program cannot do without, whose size must be one of `sizes`
    /// (an empty `sizes` accepts any size).
    pub fn require(&self, name: &str, sizes: &[u16]) -> Result<u16> {
        match self.field(name) {
            Some(f) if size_ok(f.size, sizes) => Ok(f.offset),
            found => {
                let found = match found {
                    Some(f) => format!("size {}", f.size),
                    None => "no such field".to_owned(),
                };
                bail!(
                    "tracepoint {}/{} has no field `{name}`{} (found {found}): \
                     unsupported kernel layout",
                    self.category,
                    self.name,
                    of_size(sizes)
                )
            }
        }
    }

    /// Offset of a field only some kernels have, or `None` on kernels without it. A field that
    /// is there with another size is an error: reading it at the expected width would be wrong.
    pub fn optional(&self, name: &str, sizes: &[u16]) -> Result<Option<u16>> {
        match self.field(name) {
            None => Ok(None),
            Some(f) if size_ok(f.size, sizes) => Ok(Some(f.offset)),
            Some(f) => bail!(
                "tracepoint {}/{} has field `{name}` of size {}, expected{}: \
                 unsupported kernel layout",
                self.category,
                self.name,
                f.size,
                of_size(sizes)
            ),
        }
    }
}

fn size_ok(size: u16, sizes: &[u16]) -> bool {
    sizes.is_empty() || sizes.contains(&size)
}

/// `" of size 4"`, `" of size 4 or 8"`, or nothing when any size will do.
fn of_size(sizes: &[u16]) -> String {
    match sizes {
        [] => String::new(),
        [one] => format!(" of size {one}"),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(u16::to_string).collect();
            format!(" of size {} or {last}", rest.join(", "))
        }
    }
}

/// Parses `field:<declaration>;\toffset:<n>;\tsize:<n>;\tsigned:<0|1>;`. All four attributes are
/// required, so a line cut short is an error rather than a field with a guessed size; attributes
/// a newer kernel might add are ignored.
fn parse_field(line: &str) -> Result<FieldDesc, String> {
    let (mut decl, mut offset, mut size, mut signed) = (None, None, None, None);
    for attr in line.split(';').map(str::trim).filter(|a| !a.is_empty()) {
        let Some((key, value)) = attr.split_once(':') else {
            return Err(format!("expected `key:value`, found `{attr}`"));
        };
        let value = value.trim();
        match key.trim() {
            "field" => decl = Some(value),
            "offset" => offset = Some(parse_number(key, value)?),
            "size" => size = Some(parse_number(key, value)?),
            "signed" => {
                signed = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(format!("bad signed `{value}`")),
                })
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("field line without `{what}:`");
    let decl = decl.ok_or_else(|| missing("field"))?;
    let (name, c_type, array_len) = split_declaration(decl)?;
    Ok(FieldDesc {
        name: name.to_owned(),
        c_type: c_type.to_owned(),
        offset: offset.ok_or_else(|| missing("offset"))?,
        size: size.ok_or_else(|| missing("size"))?,
        signed: signed.ok_or_else(|| missing("signed"))?,
        array_len,
    })
}

fn parse_number(key: &str, value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("bad {key} `{value}` (expected 0..=65535)"))
}

/// Splits a C declaration into (name, type, array length): the name is the last identifier before
/// a trailing `[..]`. `__u8 saddr_v6[16]` -> (`saddr_v6`, `__u8`, 16); `const void * skaddr` ->
/// (`skaddr`, `const void *`); `__data_loc char[] name` -> (`name`, `__data_loc char[]`).
fn split_declaration(decl: &str) -> Result<(&str, &str, Option<u32>), String> {
    let (base, array_len) = match decl.strip_suffix(']') {
        Some(inner) => {
            let open = inner
                .rfind('[')
                .ok_or_else(|| format!("unbalanced `]` in `{decl}`"))?;
            // A length that is not a plain number is kept as unknown: `size` is what counts.
            (&inner[..open], inner[open + 1..].trim().parse().ok())
        }
        None => (decl, None),
    };
    let base = base.trim_end();
    let c_type = base.trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
    let name = &base[c_type.len()..];
    let c_type = c_type.trim();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("no field name in declaration `{decl}`"));
    }
    if c_type.is_empty() {
        return Err(format!("no type in declaration `{decl}`"));
    }
    Ok((name, c_type, array_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(category: &str, name: &str, text: &str) -> TracepointFormat {
        match TracepointFormat::parse(category, name, text) {
            Ok(format) => format,
            Err(e) => panic!("{category}/{name}: {e:#}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match TracepointFormat::parse("tcp", "tcp_test", text) {
            Ok(format) => panic!("parsed malformed input into {format:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// Five real format files, name by name.
    fn fixtures() -> [(&'static str, &'static str, &'static str); 5] {
        [
            ("sock", "inet_sock_set_state", INET_SOCK_SET_STATE),
            ("tcp", "tcp_retransmit_skb", TCP_RETRANSMIT_SKB),
            ("tcp", "tcp_retransmit_synack", TCP_RETRANSMIT_SYNACK),
            ("tcp", "tcp_send_reset", TCP_SEND_RESET),
            ("tcp", "tcp_receive_reset", TCP_RECEIVE_RESET),
        ]
    }

    #[test]
    fn parses_inet_sock_set_state() {
        let f = parse("sock", "inet_sock_set_state", INET_SOCK_SET_STATE);
        assert_eq!(f.id, Some(2287));
        assert_eq!(f.fields().len(), 15);
        assert_eq!(
            f.field("common_type"),
            Some(&FieldDesc {
                name: "common_type".into(),
                c_type: "unsigned short".into(),
                offset: 0,
                size: 2,
                signed: false,
                array_len: None,
            })
        );
        assert_eq!(
            f.field("skaddr"),
            Some(&FieldDesc {
                name: "skaddr".into(),
                c_type: "const void *".into(),
                offset: 8,
                size: 8,
                signed: false,
                array_len: None,
            })
        );
        assert_eq!(
            f.field("saddr_v6"),
            Some(&FieldDesc {
                name: "saddr_v6".into(),
                c_type: "__u8".into(),
                offset: 40,
                size: 16,
                signed: false,
                array_len: Some(16),
            })
        );
        let oldstate = f.field("oldstate").expect("oldstate");
        assert!(oldstate.signed);
        assert_eq!((oldstate.offset, oldstate.size), (16, 4));
        assert_eq!(f.require("newstate", &[4]).expect("newstate"), 20);
        assert_eq!(f.require("protocol", &[2]).expect("protocol"), 30);
        assert_eq!(f.require("daddr", &[4]).expect("daddr"), 36);
        // Nothing from `print fmt:` leaks in as a field.
        assert!(f.field("REC").is_none());
    }

    #[test]
    fn parses_tcp_retransmit_skb_with_err() {
        let f = parse("tcp", "tcp_retransmit_skb", TCP_RETRANSMIT_SKB);
        assert_eq!(f.id, Some(2281));
        assert_eq!(f.require("skbaddr", &[8]).expect("skbaddr"), 8);
        assert_eq!(f.require("skaddr", &[8]).expect("skaddr"), 16);
        assert_eq!(f.require("state", &[4]).expect("state"), 24);
        assert_eq!(f.require("saddr_v6", &[16]).expect("saddr_v6"), 42);
        assert_eq!(f.optional("err", &[4]).expect("err"), Some(76));
    }

    #[test]
    fn parses_tcp_retransmit_synack_without_err() {
        let f = parse("tcp", "tcp_retransmit_synack", TCP_RETRANSMIT_SYNACK);
        assert_eq!(f.require("req", &[8]).expect("req"), 16);
        assert_eq!(f.require("daddr_v6", &[16]).expect("daddr_v6"), 54);
        assert_eq!(f.optional("err", &[4]).expect("err"), None);
    }

    #[test]
    fn parses_tcp_send_reset() {
        let f = parse("tcp", "tcp_send_reset", TCP_SEND_RESET);
        let reason = f.field("reason").expect("reason");
        assert_eq!(reason.c_type, "enum sk_rst_reason");
        assert_eq!((reason.offset, reason.size, reason.signed), (28, 4, false));
        let saddr = f.field("saddr").expect("saddr");
        assert_eq!(
            (saddr.offset, saddr.size, saddr.array_len),
            (32, 28, Some(28))
        );
        assert_eq!(f.require("daddr", &[28]).expect("daddr"), 60);
    }

    #[test]
    fn parses_tcp_receive_reset() {
        let f = parse("tcp", "tcp_receive_reset", TCP_RECEIVE_RESET);
        assert_eq!(f.id, Some(2279));
        assert_eq!(f.optional("sock_cookie", &[8]).expect("cookie"), Some(64));
        assert_eq!(f.require("family", &[2]).expect("family"), 20);
    }

    #[test]
    fn require_names_tracepoint_field_and_sizes() {
        let f = parse("tcp", "tcp_send_reset", TCP_SEND_RESET);
        let e = f.require("reason", &[8]).expect_err("wrong size");
        assert_eq!(
            e.to_string(),
            "tracepoint tcp/tcp_send_reset has no field `reason` of size 8 (found size 4): \
             unsupported kernel layout"
        );
        let e = f.require("nope", &[2, 4, 8]).expect_err("missing");
        assert_eq!(
            e.to_string(),
            "tracepoint tcp/tcp_send_reset has no field `nope` of size 2, 4 or 8 \
             (found no such field): unsupported kernel layout"
        );
        // No sizes: any size will do.
        assert_eq!(f.require("saddr", &[]).expect("any size"), 32);
    }

    #[test]
    fn optional_rejects_wrong_size_only() {
        let f = parse("tcp", "tcp_retransmit_skb", TCP_RETRANSMIT_SKB);
        let e = f.optional("err", &[8]).expect_err("wrong size");
        assert_eq!(
            e.to_string(),
            "tracepoint tcp/tcp_retransmit_skb has field `err` of size 4, expected of size 8: \
             unsupported kernel layout"
        );
        assert_eq!(f.optional("reason", &[4]).expect("absent"), None);
    }

    #[test]
    fn parses_declaration_shapes() {
        let text = "name: t\nformat:\n\
            \tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:char comm[TASK_COMM_LEN];\toffset:12;\tsize:16;\tsigned:0;\n\
            \tfield:unsigned long  long\tbig ;\toffset:32;\tsize:8;\tsigned:0;\tfuture:7;\n";
        let f = parse("x", "t", text);
        assert_eq!(f.id, None);
        let name = f.field("name").expect("name");
        assert_eq!(
            (name.c_type.as_str(), name.array_len),
            ("__data_loc char[]", None)
        );
        let comm = f.field("comm").expect("comm");
        assert_eq!((comm.c_type.as_str(), comm.array_len), ("char", None));
        let big = f.field("big").expect("big");
        assert_eq!(
            (big.c_type.as_str(), big.offset),
            ("unsigned long  long", 32)
        );
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let good = "\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n";
        for (bad, why) in [
            ("\tfield:int b;\toffset:12;\tsize:4;\n", "without `signed:`"),
            ("\tfield:int b;\toffset:12;\tsigned:1;\n", "without `size:`"),
            ("\tfield:int b;\tsize:4;\tsigned:1;\n", "without `offset:`"),
            (
                "\tfield:int b;\toffset:x;\tsize:4;\tsigned:1;\n",
                "bad offset `x`",
            ),
            (
                "\tfield:int b;\toffset:70000;\tsize:4;\tsigned:1;\n",
                "bad offset `70000`",
            ),
            (
                "\tfield:int b;\toffset:-1;\tsize:4;\tsigned:1;\n",
                "bad offset `-1`",
            ),
            (
                "\tfield:int b;\toffset:12;\tsize:;\tsigned:1;\n",
                "bad size ``",
            ),
            (
                "\tfield:int b;\toffset:12;\tsize:4;\tsigned:2;\n",
                "bad signed `2`",
            ),
            (
                "\tfield:int b;\toffset 12;\tsize:4;\tsigned:1;\n",
                "expected `key:value`",
            ),
            (
                "\tfield:;\toffset:12;\tsize:4;\tsigned:1;\n",
                "no field name",
            ),
            ("\tfield:b;\toffset:12;\tsize:4;\tsigned:1;\n", "no type"),
            (
                "\tfield:int[4];\toffset:12;\tsize:4;\tsigned:1;\n",
                "no type",
            ),
            (
                "\tfield:__u8 b[4;\toffset:12;\tsize:4;\tsigned:1;\n",
                "no field name",
            ),
            (
                "\tfield:__u8 b4];\toffset:12;\tsize:4;\tsigned:1;\n",
                "unbalanced `]`",
            ),
            (
                "\tfield:int a;\toffset:12;\tsize:4;\tsigned:1;\n",
                "`a` appears twice",
            ),
            (
                "\tfield:int é;\toffset:12;\tsize:4;\tsigned:1;\n",
                "no field name",
            ),
        ] {
            let text = format!("name: tcp_test\nformat:\n{good}{bad}");
            let e = parse_err(&text);
            assert!(
                e.starts_with("tracepoint tcp/tcp_test: malformed format file, line 4: "),
                "{e}"
            );
            assert!(e.contains(why), "{bad:?}: expected {why:?} in {e}");
        }
        let e = parse_err("name: tcp_test\nID: twelve\nformat:\n");
        assert!(e.contains("line 2: bad ID `twelve`"), "{e}");
    }

    #[test]
    fn input_without_fields_is_an_error() {
        for text in [
            "",
            "\n\n",
            "name: tcp_test\nID: 1\nformat:\n",
            "garbage",
            "\u{0}\u{ff}",
        ] {
            let e = parse_err(text);
            assert!(e.contains("has no `field:` lines"), "{e}");
        }
    }

    /// A file cut anywhere must give an error or the fields before the cut, never a wrong field
    /// and never a panic.
    #[test]
    fn truncated_files_never_yield_wrong_fields() {
        for (category, name, text) in fixtures() {
            let full = parse(category, name, text);
            for cut in 0..text.len() {
                let Some(prefix) = text.get(..cut) else {
                    continue;
                };
                if let Ok(part) = TracepointFormat::parse(category, name, prefix) {
                    assert!(
                        full.fields().starts_with(part.fields()),
                        "{name} cut at {cut}: {part:?}"
                    );
                }
            }
        }
        // Cut inside the `daddr_v6` line of inet_sock_set_state (line 19).
        let cut = INET_SOCK_SET_STATE
            .find("size:16;\tsigned:0;\n\nprint")
            .expect("fixture");
        let e = TracepointFormat::parse("sock", "inet_sock_set_state", &INET_SOCK_SET_STATE[..cut])
            .expect_err("truncated");
        assert!(
            e.to_string()
                .contains("malformed format file, line 19: field line without `size:`"),
            "{e}"
        );
    }

    /// A scratch directory laid out like tracefs, removed on drop.
    struct FakeTraceFs(PathBuf);

    impl FakeTraceFs {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("tcptrace-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            FakeTraceFs(dir)
        }

        fn add(&self, category: &str, name: &str, text: &str) {
            let dir = self.0.join("events").join(category).join(name);
            std::fs::create_dir_all(&dir).expect("event dir");
            std::fs::write(dir.join("format"), text).expect("format file");
        }
    }

    impl Drop for FakeTraceFs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn format_reads_event_files() {
        let fake = FakeTraceFs::new("format-reads");
        for (category, name, text) in fixtures() {
            fake.add(category, name, text);
        }
        let tracefs = TraceFs::at(&fake.0);
        assert_eq!(tracefs.root(), fake.0.as_path());
        for (category, name, text) in fixtures() {
            let read = tracefs.format(category, name).expect("format");
            assert_eq!(read, parse(category, name, text));
        }
    }

    #[test]
    fn format_names_a_missing_tracepoint() {
        let fake = FakeTraceFs::new("format-missing");
        fake.add("tcp", "tcp_send_reset", TCP_SEND_RESET);
        let e = TraceFs::at(&fake.0)
            .format("tcp", "tcp_receive_reset")
            .expect_err("missing")
            .to_string();
        let path = fake.0.join("events/tcp/tcp_receive_reset/format");
        assert_eq!(
            e,
            format!(
                "tracepoint tcp/tcp_receive_reset does not exist on this kernel ({} missing); \
                 tcptrace needs Linux >= {MIN_KERNEL} built with CONFIG_EVENT_TRACING=y",
                path.display()
            )
        );
        assert!(!e.contains('\n'));
        // A whole missing category reads the same.
        let e = TraceFs::at(&fake.0)
            .format("sock", "inet_sock_set_state")
            .expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("tracepoint sock/inet_sock_set_state does not exist")
        );
    }

    #[test]
    fn format_names_the_path_of_other_errors() {
        let fake = FakeTraceFs::new("format-other");
        // A directory where the file should be: EISDIR, not ENOENT.
        std::fs::create_dir_all(fake.0.join("events/tcp/tcp_send_reset/format")).expect("dir");
        let e = TraceFs::at(&fake.0)
            .format("tcp", "tcp_send_reset")
            .expect_err("eisdir");
        let path = fake.0.join("events/tcp/tcp_send_reset/format");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", path.display())),
            "{e}"
        );
        // A malformed file says where it is.
        fake.add(
            "tcp",
            "tcp_receive_reset",
            "format:\n\tfield:int a;\toffset:8;\n",
        );
        let e = TraceFs::at(&fake.0)
            .format("tcp", "tcp_receive_reset")
            .expect_err("malformed");
        let path = fake.0.join("events/tcp/tcp_receive_reset/format");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn ordinary_directories_are_not_tracefs() {
        assert!(!is_tracefs(Path::new("/")));
        assert!(!is_tracefs(&std::env::temp_dir()));
        assert!(!is_tracefs(Path::new("/nonexistent/tcptrace")));
    }

    /// `/sys/kernel/tracing/events/sock/inet_sock_set_state/format` as Linux 6.18 prints it.
    const INET_SOCK_SET_STATE: &str = "\
name: inet_sock_set_state\n\
ID: 2287\n\
format:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n\
\n\
print fmt: \"family=%s protocol=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c oldstate=%s newstate=%s\", __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), __print_symbolic(REC->protocol, { 6, \"IPPROTO_TCP\" }, { 132, \"IPPROTO_SCTP\" }, { 262, \"IPPROTO_MPTCP\" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->oldstate, { 1, \"TCP_ESTABLISHED\" }, { 2, \"TCP_SYN_SENT\" }, { 3, \"TCP_SYN_RECV\" }, { 4, \"TCP_FIN_WAIT1\" }, { 5, \"TCP_FIN_WAIT2\" }, { 6, \"TCP_TIME_WAIT\" }, { 7, \"TCP_CLOSE\" }, { 8, \"TCP_CLOSE_WAIT\" }, { 9, \"TCP_LAST_ACK\" }, { 10, \"TCP_LISTEN\" }, { 11, \"TCP_CLOSING\" }, { 12, \"TCP_NEW_SYN_RECV\" }), __print_symbolic(REC->newstate, { 1, \"TCP_ESTABLISHED\" }, { 2, \"TCP_SYN_SENT\" }, { 3, \"TCP_SYN_RECV\" }, { 4, \"TCP_FIN_WAIT1\" }, { 5, \"TCP_FIN_WAIT2\" }, { 6, \"TCP_TIME_WAIT\" }, { 7, \"TCP_CLOSE\" }, { 8, \"TCP_CLOSE_WAIT\" }, { 9, \"TCP_LAST_ACK\" }, { 10, \"TCP_LISTEN\" }, { 11, \"TCP_CLOSING\" }, { 12, \"TCP_NEW_SYN_RECV\" })\n";

    /// `/sys/kernel/tracing/events/tcp/tcp_retransmit_skb/format` as Linux 6.18 prints it.
    const TCP_RETRANSMIT_SKB: &str = "\
name: tcp_retransmit_skb\n\
ID: 2281\n\
format:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;\n\
\tfield:int err;\toffset:76;\tsize:4;\tsigned:1;\n\
\n\
print fmt: \"skbaddr=%p skaddr=%p family=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c state=%s err=%d\", REC->skbaddr, REC->skaddr, __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, __print_symbolic(REC->state, { TCP_ESTABLISHED, \"TCP_ESTABLISHED\" }, { TCP_SYN_SENT, \"TCP_SYN_SENT\" }, { TCP_SYN_RECV, \"TCP_SYN_RECV\" }, { TCP_FIN_WAIT1, \"TCP_FIN_WAIT1\" }, { TCP_FIN_WAIT2, \"TCP_FIN_WAIT2\" }, { TCP_TIME_WAIT, \"TCP_TIME_WAIT\" }, { TCP_CLOSE, \"TCP_CLOSE\" }, { TCP_CLOSE_WAIT, \"TCP_CLOSE_WAIT\" }, { TCP_LAST_ACK, \"TCP_LAST_ACK\" }, { TCP_LISTEN, \"TCP_LISTEN\" }, { TCP_CLOSING, \"TCP_CLOSING\" }, { TCP_NEW_SYN_RECV, \"TCP_NEW_SYN_RECV\" }), REC->err\n";

    /// `/sys/kernel/tracing/events/tcp/tcp_retransmit_synack/format` as Linux 6.18 prints it.
    const TCP_RETRANSMIT_SYNACK: &str = "\
name: tcp_retransmit_synack\n\
ID: 2275\n\
format:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:const void * req;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:30;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:38;\tsize:16;\tsigned:0;\n\
\tfield:__u8 daddr_v6[16];\toffset:54;\tsize:16;\tsigned:0;\n\
\n\
print fmt: \"family=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c\", __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6\n";

    /// `/sys/kernel/tracing/events/tcp/tcp_send_reset/format` as Linux 6.18 prints it.
    const TCP_SEND_RESET: &str = "\
name: tcp_send_reset\n\
ID: 2280\n\
format:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n\
\n\
print fmt: \"skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s\", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, \"TCP_ESTABLISHED\" }, { TCP_SYN_SENT, \"TCP_SYN_SENT\" }, { TCP_SYN_RECV, \"TCP_SYN_RECV\" }, { TCP_FIN_WAIT1, \"TCP_FIN_WAIT1\" }, { TCP_FIN_WAIT2, \"TCP_FIN_WAIT2\" }, { TCP_TIME_WAIT, \"TCP_TIME_WAIT\" }, { TCP_CLOSE, \"TCP_CLOSE\" }, { TCP_CLOSE_WAIT, \"TCP_CLOSE_WAIT\" }, { TCP_LAST_ACK, \"TCP_LAST_ACK\" }, { TCP_LISTEN, \"TCP_LISTEN\" }, { TCP_CLOSING, \"TCP_CLOSING\" }, { TCP_NEW_SYN_RECV, \"TCP_NEW_SYN_RECV\" }) : \"UNKNOWN\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 1, \"NO_SOCKET\" }, { 2, \"TCP_INVALID_ACK_SEQUENCE\" }, { 3, \"TCP_RFC7323_PAWS\" }, { 4, \"TCP_TOO_OLD_ACK\" }, { 5, \"TCP_ACK_UNSENT_DATA\" }, { 6, \"TCP_FLAGS\" }, { 7, \"TCP_OLD_ACK\" }, { 8, \"TCP_ABORT_ON_DATA\" }, { 9, \"TCP_TIMEWAIT_SOCKET\" }, { 10, \"INVALID_SYN\" }, { 11, \"TCP_ABORT_ON_CLOSE\" }, { 12, \"TCP_ABORT_ON_LINGER\" }, { 13, \"TCP_ABORT_ON_MEMORY\" }, { 14, \"TCP_STATE\" }, { 15, \"TCP_KEEPALIVE_TIMEOUT\" }, { 16, \"TCP_DISCONNECT_WITH_DATA\" }, { 17, \"MPTCP_RST_EUNSPEC\" }, { 18, \"MPTCP_RST_EMPTCP\" }, { 19, \"MPTCP_RST_ERESOURCE\" }, { 20, \"MPTCP_RST_EPROHIBIT\" }, { 21, \"MPTCP_RST_EWQ2BIG\" }, { 22, \"MPTCP_RST_EBADPERF\" }, { 23, \"MPTCP_RST_EMIDDLEBOX\" }, { 24, \"ERROR\" }, { 25, \"MAX\" })\n";

    /// `/sys/kernel/tracing/events/tcp/tcp_receive_reset/format` as Linux 6.18 prints it.
    const TCP_RECEIVE_RESET: &str = "\
name: tcp_receive_reset\n\
ID: 2279\n\
format:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;\n\
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;\n\
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;\n\
\n\
print fmt: \"family=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c sock_cookie=%llx\", __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, REC->sock_cookie\n";
}
