//! Kernel struct layouts from BTF.
//!
//! Some of what tcptrace reports is not in any tracepoint record: the network namespace of a
//! socket, for one, sits behind `sock->__sk_common.skc_net.net->ns.inum`. The kernel programs
//! follow those pointers with `bpf_probe_read_kernel`, and where each member sits changes with
//! kernel version and configuration. The running kernel describes its own types in BTF at
//! `/sys/kernel/btf/vmlinux`, so tcptrace looks the offsets up there at load time and hands them
//! to the kernel programs, instead of compiling in the layout of one kernel.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use btf_rs::{Btf, Type};

/// Where the kernel exposes its own BTF (`CONFIG_DEBUG_INFO_BTF=y`).
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Bound on typedef/const/volatile chains and on anonymous struct nesting. Real kernels need a
/// handful; the bound only stops corrupt BTF (a type that refers to itself) from looping forever.
const MAX_DEPTH: usize = 32;

/// The running kernel's BTF.
pub struct KernelBtf {
    btf: Btf,
    /// Size of a kernel pointer, which BTF does not record on pointer types. Taken from the
    /// kernel's `unsigned long`, which has pointer width on every Linux architecture.
    pointer_size: u32,
}

/// Where a struct member sits, in bytes from the start of the outermost struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

impl KernelBtf {
    /// Loads the running kernel's BTF from `/sys/kernel/btf/vmlinux`.
    pub fn load() -> Result<Self> {
        Self::from_path(Path::new(VMLINUX))
    }

    /// Loads BTF from a file (a raw BTF blob, as in `/sys/kernel/btf/`).
    pub fn from_path(path: &Path) -> Result<Self> {
        // Mapping the file costs milliseconds (each lookup then scans it, which is fine for the
        // handful tcptrace makes); parsing all of it up front, the fallback, costs ~0.3 s. Only
        // recent kernels (6.16+) let /sys/kernel/btf/vmlinux be mapped. Any real problem with the
        // file shows up again, and is reported, on the fallback.
        let loaded = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(path));
        let btf = match loaded {
            Ok(btf) => btf,
            Err(btf_rs::Error::IO(e)) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "this kernel exposes no BTF ({} missing): tcptrace needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF=y (Linux >= 5.5; most distributions since 2020)",
                path.display()
            ),
            Err(e) => bail!("cannot load BTF from {}: {e}", path.display()),
        };
        let pointer_size = btf
            .resolve_types_by_name("long unsigned int")
            .ok()
            .and_then(|types| {
                types.into_iter().find_map(|t| match t {
                    Type::Int(i) => u32::try_from(i.size()).ok(),
                    _ => None,
                })
            })
            // No `unsigned long` in BTF would be odd; the kernel then most likely matches us.
            .unwrap_or(usize::BITS / 8);
        Ok(KernelBtf { btf, pointer_size })
    }

    /// Byte offset of the member reached by `path` (dot-separated) from `struct struct_name`.
    /// See [`KernelBtf::member`].
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32> {
        Ok(self.member(struct_name, path)?.offset)
    }

    /// Offset and size of the member reached by `path` from `struct struct_name`, e.g.
    /// `("sock", "__sk_common.skc_net")`. Members of anonymous structs and unions are found as if
    /// they were members of the enclosing struct, as in C. Bitfields and members not on a byte
    /// boundary are errors: the kernel programs read whole bytes.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member> {
        let no_member = || anyhow!("BTF: struct {struct_name} has no member {path}");
        let mut composite = self.composite(struct_name)?;
        let mut bits: u64 = 0;
        let mut components = path.split('.').peekable();
        while let Some(name) = components.next() {
            if name.is_empty() {
                return Err(no_member());
            }
            let (member, member_bits) = self
                .find_member(&composite, name, 0)?
                .ok_or_else(no_member)?;
            if member.bitfield_size().is_some_and(|width| width != 0) {
                bail!(
                    "BTF: struct {struct_name} member {path} is a bitfield, not byte-addressable"
                );
            }
            // Kernels whose BTF marks bitfields the old way (without kind_flag) still show them
            // as members that do not start on a byte.
            if member_bits % 8 != 0 {
                bail!("BTF: struct {struct_name} member {path} is not byte aligned");
            }
            bits += member_bits;
            let ty = self.strip_modifiers(self.btf.resolve_chained_type(&member)?)?;
            if components.peek().is_none() {
                return Ok(Member {
                    offset: u32::try_from(bits / 8)?,
                    size: self.size_of(&ty, 0)?,
                });
            }
            composite = match ty {
                Type::Struct(s) | Type::Union(s) => s,
                _ => bail!(
                    "BTF: struct {struct_name} has no member {path} ({name} is a {}, not a struct)",
                    ty.name()
                ),
            };
        }
        Err(no_member())
    }

    /// Value of enumerator `variant` of `enum enum_name`. An empty `enum_name` searches the
    /// anonymous enums, such as the one holding the TCP states (`TCP_LISTEN`).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Result<i64> {
        let mut found_enum = false;
        for ty in self.types_named(enum_name)? {
            match ty {
                Type::Enum(e) => {
                    found_enum = true;
                    for m in &e.members {
                        if self.btf.resolve_name(m)? == variant {
                            // The raw value is 32 bits; kind_flag says whether to sign-extend.
                            return Ok(if e.is_signed() {
                                i64::from(m.val().cast_signed())
                            } else {
                                i64::from(m.val())
                            });
                        }
                    }
                }
                Type::Enum64(e) => {
                    found_enum = true;
                    for m in &e.members {
                        if self.btf.resolve_name(m)? == variant {
                            return if e.is_signed() {
                                Ok(m.val().cast_signed())
                            } else {
                                i64::try_from(m.val()).map_err(|_| {
                                    anyhow!(
                                        "BTF: enum {enum_name} value {variant} does not fit i64"
                                    )
                                })
                            };
                        }
                    }
                }
                _ => {}
            }
        }
        if found_enum {
            bail!("BTF: enum {enum_name} has no value {variant}")
        }
        bail!("BTF: no enum {enum_name}")
    }

    /// The struct (or union) named `name`. Names can be shared with forward declarations and,
    /// rarely, with other definitions; the one with members is the one to walk.
    fn composite(&self, name: &str) -> Result<btf_rs::Struct> {
        let mut union = None;
        for ty in self.types_named(name)? {
            match ty {
                Type::Struct(s) if !s.members.is_empty() => return Ok(s),
                Type::Union(u) if !u.members.is_empty() => union = union.or(Some(u)),
                _ => {}
            }
        }
        union.ok_or_else(|| anyhow!("BTF: no struct {name}"))
    }

    fn types_named(&self, name: &str) -> Result<Vec<Type>> {
        self.btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("BTF: cannot look up `{name}`: {e}"))
    }

    /// The member called `name` in `composite` or in any anonymous struct or union inside it,
    /// with its offset in bits from the start of `composite`.
    fn find_member(
        &self,
        composite: &btf_rs::Struct,
        name: &str,
        depth: usize,
    ) -> Result<Option<(btf_rs::Member, u64)>> {
        if depth > MAX_DEPTH {
            bail!("BTF: anonymous members nested deeper than {MAX_DEPTH} looking for {name}");
        }
        for member in &composite.members {
            if self.btf.resolve_name(member)? == name {
                return Ok(Some((member.clone(), u64::from(member.bit_offset()))));
            }
        }
        // C puts the members of an anonymous struct or union in the enclosing scope, so search
        // them only after the named members at this level.
        for member in &composite.members {
            if !self.btf.resolve_name(member)?.is_empty() {
                continue;
            }
            if let Type::Struct(inner) | Type::Union(inner) =
                self.strip_modifiers(self.btf.resolve_chained_type(member)?)?
                && let Some((found, bits)) = self.find_member(&inner, name, depth + 1)?
            {
                return Ok(Some((found, u64::from(member.bit_offset()) + bits)));
            }
        }
        Ok(None)
    }

    /// Follows typedef, const, volatile, restrict and type tags down to the type they qualify.
    fn strip_modifiers(&self, mut ty: Type) -> Result<Type> {
        for _ in 0..MAX_DEPTH {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(t)?
                }
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
        bail!("BTF: type modifier chain longer than {MAX_DEPTH}")
    }

    /// Size in bytes of a value of type `ty`.
    fn size_of(&self, ty: &Type, depth: usize) -> Result<u32> {
        if depth > MAX_DEPTH {
            bail!("BTF: array nesting deeper than {MAX_DEPTH}");
        }
        let size = match ty {
            Type::Int(t) => t.size(),
            Type::Float(t) => t.size(),
            Type::Enum(t) => t.size(),
            Type::Enum64(t) => t.size(),
            Type::Struct(t) | Type::Union(t) => t.size(),
            Type::Ptr(_) => return Ok(self.pointer_size),
            Type::Array(a) => {
                let element = self.strip_modifiers(self.btf.resolve_chained_type(a)?)?;
                let element = self.size_of(&element, depth + 1)?;
                return u32::try_from(a.len())
                    .ok()
                    .and_then(|len| len.checked_mul(element))
                    .ok_or_else(|| anyhow!("BTF: array of {} elements is too large", a.len()));
            }
            Type::Typedef(_)
            | Type::Volatile(_)
            | Type::Const(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                return self.size_of(&self.strip_modifiers(ty.clone())?, depth + 1);
            }
            other => bail!("BTF: a {} has no size", other.name()),
        };
        Ok(u32::try_from(size)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests run against the running kernel's BTF and assert only what holds on every kernel.
    /// Without BTF they fail: tcptrace cannot work there, and a skipped test would hide that.
    fn kernel() -> KernelBtf {
        match KernelBtf::load() {
            Ok(btf) => btf,
            Err(e) => panic!("{e:#}"),
        }
    }

    fn member(btf: &KernelBtf, struct_name: &str, path: &str) -> Member {
        match btf.member(struct_name, path) {
            Ok(m) => m,
            Err(e) => panic!("{e:#}"),
        }
    }

    #[test]
    fn finds_the_members_tcptrace_reads() {
        let btf = kernel();
        assert!(btf.pointer_size == 8 || btf.pointer_size == 4);
        // `struct sock` starts with its `struct sock_common`, so offsets through it are the
        // `sock_common` ones.
        assert_eq!(member(&btf, "sock", "__sk_common").offset, 0);
        for inner in [
            "skc_state",
            "skc_net",
            "skc_family",
            "skc_daddr",
            "skc_dport",
        ] {
            assert_eq!(
                member(&btf, "sock", &format!("__sk_common.{inner}")),
                member(&btf, "sock_common", inner),
                "{inner}"
            );
        }
        // `volatile unsigned char`: the qualifier must not hide the size.
        assert_eq!(member(&btf, "sock", "__sk_common.skc_state").size, 1);
        // `possible_net_t`, a typedef of a struct holding one pointer (or nothing without
        // CONFIG_NET_NS).
        let net = member(&btf, "sock", "__sk_common.skc_net");
        assert!(net.size == btf.pointer_size || net.size == 0, "{net:?}");
        assert_eq!(member(&btf, "net", "ns.inum").size, 4);
        assert_eq!(
            btf.member_offset("net", "ns.inum").expect("net.ns.inum"),
            btf.member_offset("net", "ns").expect("net.ns")
                + btf
                    .member_offset("ns_common", "inum")
                    .expect("ns_common.inum")
        );
        assert_eq!(member(&btf, "sk_buff", "dev").size, btf.pointer_size);
        member(&btf, "net_device", "nd_net");
        assert_eq!(member(&btf, "tcp_sock", "srtt_us").size, 4);
        member(&btf, "sock", "sk_ack_backlog");
        member(&btf, "sock", "sk_max_ack_backlog");
        // A struct deep inside another: `tcp_sock` begins with `inet_connection_sock`, which
        // begins with `inet_sock`, which begins with `struct sock`.
        assert_eq!(
            member(
                &btf,
                "tcp_sock",
                "inet_conn.icsk_inet.sk.__sk_common.skc_state"
            ),
            member(&btf, "sock_common", "skc_state")
        );
    }

    #[test]
    fn looks_inside_anonymous_structs_and_unions() {
        let btf = kernel();
        // `union { __addrpair skc_addrpair; struct { __be32 skc_daddr; __be32 skc_rcv_saddr; }; }`
        // opens `struct sock_common` on every kernel.
        assert_eq!(
            member(&btf, "sock_common", "skc_daddr"),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            member(&btf, "sock_common", "skc_rcv_saddr"),
            Member { offset: 4, size: 4 }
        );
        assert_eq!(
            member(&btf, "sock_common", "skc_addrpair"),
            Member { offset: 0, size: 8 }
        );
    }

    #[test]
    fn arrays_have_their_whole_size() {
        let btf = kernel();
        // `__u16 skc_u16hashes[2]`
        assert_eq!(member(&btf, "sock_common", "skc_u16hashes").size, 4);
    }

    #[test]
    fn explains_what_it_cannot_find_or_read() {
        let btf = kernel();
        let error = |s: &str, p: &str| btf.member(s, p).expect_err("must fail").to_string();
        assert_eq!(
            error("sock", "__sk_common.skc_foo"),
            "BTF: struct sock has no member __sk_common.skc_foo"
        );
        assert_eq!(error("sock", ""), "BTF: struct sock has no member ");
        assert_eq!(
            error("sock", "__sk_common..skc_state"),
            "BTF: struct sock has no member __sk_common..skc_state"
        );
        assert_eq!(
            error("tcptrace_no_such_struct", "x"),
            "BTF: no struct tcptrace_no_such_struct"
        );
        // `unsigned char skc_reuse:4` has been a bitfield for as long as there was BTF.
        assert_eq!(
            error("sock", "__sk_common.skc_reuse"),
            "BTF: struct sock member __sk_common.skc_reuse is a bitfield, not byte-addressable"
        );
        // Descending through a pointer would need a read at run time, not an offset.
        let e = error("sk_buff", "dev.nd_net");
        assert!(
            e.starts_with("BTF: struct sk_buff has no member dev.nd_net (dev is a ptr"),
            "{e}"
        );
    }

    #[test]
    fn reads_enum_values() {
        let btf = kernel();
        let overflow = btf
            .enum_value("skb_drop_reason", "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW")
            .expect("listen overflow drop reason");
        assert!(overflow > 0);
        // The TCP states are an anonymous enum, and part of the ABI.
        assert_eq!(btf.enum_value("", "TCP_LISTEN").expect("TCP_LISTEN"), 10);
        // Enumerators that are 0 everywhere.
        assert_eq!(
            btf.enum_value("skb_drop_reason", "SKB_NOT_DROPPED_YET")
                .expect("0"),
            0
        );
        assert_eq!(
            btf.enum_value("skb_drop_reason", "NOPE")
                .expect_err("no value")
                .to_string(),
            "BTF: enum skb_drop_reason has no value NOPE"
        );
        assert_eq!(
            btf.enum_value("tcptrace_no_such_enum", "X")
                .expect_err("no enum")
                .to_string(),
            "BTF: no enum tcptrace_no_such_enum"
        );
        // A struct of that name is not an enum.
        assert_eq!(
            btf.enum_value("sock", "X")
                .expect_err("not an enum")
                .to_string(),
            "BTF: no enum sock"
        );
    }

    #[test]
    fn missing_file_says_what_the_kernel_lacks() {
        let path = Path::new("/nonexistent/tcptrace/vmlinux");
        let e = KernelBtf::from_path(path).err().expect("missing file");
        assert_eq!(
            e.to_string(),
            "this kernel exposes no BTF (/nonexistent/tcptrace/vmlinux missing): tcptrace needs \
             a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux >= 5.5; most distributions since \
             2020)"
        );
    }

    #[test]
    fn unparsable_file_names_the_path() {
        let path = std::env::temp_dir().join(format!("tcptrace-not-btf-{}", std::process::id()));
        std::fs::write(&path, b"this is not BTF").expect("temp file");
        let e = KernelBtf::from_path(&path).err().expect("not BTF");
        let _ = std::fs::remove_file(&path);
        let e = e.to_string();
        assert!(
            e.starts_with(&format!("cannot load BTF from {}: ", path.display())),
            "{e}"
        );
    }
}
