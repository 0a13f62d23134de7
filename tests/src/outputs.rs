//! The aggregator's outputs as the tests read them: the JSON summary, the closing line of
//! `watch`/`replay`, `watch` frames, histogram logs and `report` tables; plus temporary
//! directories for output files and an nftables rule that drops the first packet of a kind.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::cmd::{Finished, run_with_timeout};
use crate::netns::{Netns, nft};
use crate::tracer::{TracerOutput, tracer_bin};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under the system temporary directory, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("tcptrace-tests-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `DIR/name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `DIR/name` as a string, for command lines.
    pub fn arg(&self, name: &str) -> String {
        self.file(name).to_str().expect("utf-8 path").to_string()
    }

    /// Names of the entries in the directory, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", self.0.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Drop the first packet of each client connection to `port` whose flags (among `mask`) are
/// exactly `flags`, e.g. `("syn|ack", "syn")` for the first SYN or
/// `("syn|ack|fin|rst|psh", "ack")` for the final handshake ACK. A dynamic set remembers the
/// client ports already dropped once. The table dies with the namespace.
pub fn drop_first(ns: &Netns, port: u16, mask: &str, flags: &str) {
    nft(
        ns,
        &format!(
            "table inet tcptrace_test_{port} {{
  set seen {{ type inet_service; flags dynamic; }}
  chain out {{
    type filter hook output priority 0; policy accept;
    tcp dport {port} tcp flags & ({mask}) == {flags} tcp sport != @seen add @seen {{ tcp sport }} drop
  }}
}}
"
        ),
    );
}

/// Run the tracer binary with `args` (stdin closed), killing it after `limit`.
pub fn run_tracer(args: &[&str], limit: Duration) -> Finished {
    run_with_timeout(Command::new(tracer_bin()).args(args), limit)
}

/// Show a finished command's status and output, for assertion messages.
pub fn show(what: &str, f: &Finished) -> String {
    format!(
        "{what}: exit {}\nstdout:\n{}\nstderr:\n{}",
        f.status, f.stdout, f.stderr
    )
}

/// The closing line every mode prints on stderr:
/// `tcptrace: N events received, [K state changes measured in the kernel, ][M shown, ]L lost (ring
/// buffer full or skipped by the kernel), U undecodable, E sockets evicted, Ts` ("shown" only in
/// `events` mode, the in-kernel count only with in-kernel aggregation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closing {
    pub received: u64,
    pub in_kernel: Option<u64>,
    pub shown: Option<u64>,
    pub lost: u64,
    pub undecodable: u64,
    pub evicted: u64,
    pub secs: f64,
}

pub fn parse_closing(line: &str) -> Option<Closing> {
    let rest = line.strip_prefix("tcptrace: ")?;
    let mut parts: Vec<&str> = rest.split(", ").collect();
    let num = |s: &str, suffix: &str| -> Option<u64> { s.strip_suffix(suffix)?.parse().ok() };
    let mut optional = |suffix: &str| -> Option<u64> {
        let v = parts.get(1).and_then(|p| num(p, suffix))?;
        parts.remove(1);
        Some(v)
    };
    let in_kernel = optional(" state changes measured in the kernel");
    let shown = optional(" shown");
    if parts.len() != 5 {
        return None;
    }
    Some(Closing {
        received: num(parts[0], " events received")?,
        in_kernel,
        shown,
        lost: num(
            parts[1],
            " lost (ring buffer full or skipped by the kernel)",
        )?,
        undecodable: num(parts[2], " undecodable")?,
        evicted: num(parts[3], " sockets evicted")?,
        secs: parts[4].strip_suffix('s')?.parse().ok()?,
    })
}

/// The closing line in `stderr`; panics (showing stderr) if there is none or more than one.
pub fn closing_of(stderr: &str) -> Closing {
    let all: Vec<Closing> = stderr.lines().filter_map(parse_closing).collect();
    assert_eq!(
        all.len(),
        1,
        "want exactly one closing line `tcptrace: N events received, ...` on stderr:\n{stderr}"
    );
    all[0]
}

/// The stdout lines of a `watch` run (none of them is JSON, so all are in `bad_lines`).
pub fn watch_stdout(out: &TracerOutput) -> &[String] {
    assert!(
        out.events.is_empty(),
        "watch printed JSON lines on stdout: {:?}",
        out.events
    );
    &out.bad_lines
}

/// What a clean `watch` run promises: exit 0, no error line, a closing line without "shown",
/// nothing lost or undecodable.
pub fn assert_clean_watch(out: &TracerOutput) -> Closing {
    assert!(
        out.status.success(),
        "tracer {:?} exited with {}; stderr:\n{}",
        out.args,
        out.status,
        out.stderr
    );
    assert!(
        out.error_lines().is_empty(),
        "tracer {:?} printed error lines:\n{}",
        out.args,
        out.stderr
    );
    let c = closing_of(&out.stderr);
    assert_eq!(
        c.shown, None,
        "watch mode's closing line has no `shown` part:\n{}",
        out.stderr
    );
    assert_eq!(c.lost, 0, "tracer lost events:\n{}", out.stderr);
    assert_eq!(c.undecodable, 0, "undecodable events:\n{}", out.stderr);
    c
}

/// Split `watch` output into frames, each starting with a line `tcptrace watch ...`. Lines
/// before the first frame are returned as frame 0 only if there are any (they should not be).
pub fn frames(lines: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for l in lines {
        if l.starts_with("tcptrace watch") || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().push(l.clone());
    }
    out
}

/// The rows of one table of a frame (`HANDSHAKE` or `TIME IN STATE`), header included, up to the
/// first blank line.
pub fn frame_table(frame: &[String], header: &str) -> Vec<String> {
    let Some(i) = frame.iter().position(|l| l.starts_with(header)) else {
        panic!("no `{header}` table in frame:\n{}", frame.join("\n"));
    };
    frame[i..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .cloned()
        .collect()
}

/// The COUNT column of a table row whose first word is `name`, if there is such a row.
pub fn row_count(table: &[String], name: &str) -> Option<u64> {
    table.iter().skip(1).find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == name).then(|| w.next()?.parse().ok())?
    })
}

/// Read and parse a JSON summary file.
pub fn read_summary(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}):\n{text}", path.display()))
}

/// One histogram of the JSON summary (`H`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct H {
    pub count: u64,
    pub min_us: Option<u64>,
    pub mean_us: Option<f64>,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
}

impl H {
    pub fn min(&self) -> u64 {
        self.min_us.expect("min_us of a non-empty histogram")
    }
    pub fn max(&self) -> u64 {
        self.max_us.expect("max_us of a non-empty histogram")
    }
    pub fn p50(&self) -> u64 {
        self.p50_us.expect("p50_us of a non-empty histogram")
    }
    pub fn mean(&self) -> f64 {
        self.mean_us.expect("mean_us of a non-empty histogram")
    }
}

/// The histogram at JSON pointer `ptr` (e.g. `/by_port/8080/dwell/CLOSE_WAIT`); panics showing
/// the summary if it is missing or malformed. Checks the documented shape: every key present,
/// nulls exactly when empty, min <= p50 <= p90 <= p99 <= p99.9 <= max.
pub fn hist(summary: &Value, ptr: &str) -> H {
    let v = summary
        .pointer(ptr)
        .unwrap_or_else(|| panic!("no {ptr} in the JSON summary:\n{summary:#}"));
    let ctx = || format!("{ptr} = {v}");
    let u = |k: &str| -> Option<u64> {
        let f = v
            .get(k)
            .unwrap_or_else(|| panic!("histogram without `{k}`: {}", ctx()));
        if f.is_null() {
            None
        } else {
            Some(
                f.as_u64()
                    .unwrap_or_else(|| panic!("`{k}` is not an integer: {}", ctx())),
            )
        }
    };
    let count = u("count").unwrap_or_else(|| panic!("null count: {}", ctx()));
    let mean = v
        .get("mean_us")
        .unwrap_or_else(|| panic!("histogram without `mean_us`: {}", ctx()));
    let h = H {
        count,
        min_us: u("min_us"),
        mean_us: mean.as_f64(),
        p50_us: u("p50_us"),
        p90_us: u("p90_us"),
        p99_us: u("p99_us"),
        p999_us: u("p999_us"),
        max_us: u("max_us"),
    };
    let vals = [h.min_us, h.p50_us, h.p90_us, h.p99_us, h.p999_us, h.max_us];
    if count == 0 {
        assert!(
            vals.iter().all(Option::is_none) && mean.is_null(),
            "an empty histogram has nulls: {}",
            ctx()
        );
    } else {
        assert!(
            vals.iter().all(Option::is_some) && h.mean_us.is_some(),
            "a non-empty histogram has no nulls: {}",
            ctx()
        );
        let vals: Vec<u64> = vals.iter().map(|x| x.unwrap()).collect();
        assert!(
            vals.windows(2).all(|w| w[0] <= w[1]),
            "min <= p50 <= p90 <= p99 <= p99.9 <= max: {}",
            ctx()
        );
        let m = h.mean();
        assert!(
            m + 1.0 >= vals[0] as f64 && m <= vals[5] as f64 + 1.0,
            "min <= mean <= max: {}",
            ctx()
        );
    }
    h
}

/// The integer at JSON pointer `ptr`; panics showing the summary if missing.
pub fn int(summary: &Value, ptr: &str) -> u64 {
    summary
        .pointer(ptr)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer {ptr} in the JSON summary:\n{summary:#}"))
}

/// In-kernel histograms: a bucket's midpoint is within this fraction of any value in the bucket.
pub const BUCKET: f64 = 1.0 / 64.0;

/// HdrHistogram with 3 significant digits: a recorded value is reported within 1/1024 of itself
/// (plus 1 µs for the ns -> µs truncation).
pub fn hdr_tol_us(v: f64) -> f64 {
    v.abs() / 1000.0 + 1.0
}

/// Assert `lo - tol <= got <= hi + tol` where tol is `slack_us` plus HdrHistogram's precision.
pub fn assert_between_us(
    what: &str,
    got_us: u64,
    lo_us: f64,
    hi_us: f64,
    slack_us: f64,
    ctx: &str,
) {
    let got = got_us as f64;
    let lo = lo_us - slack_us - hdr_tol_us(lo_us);
    let hi = hi_us + slack_us + hdr_tol_us(hi_us);
    assert!(
        (lo..=hi).contains(&got),
        "{what}: {got_us} µs, want within [{lo_us:.0}, {hi_us:.0}] µs (± {slack_us:.0} µs slack \
         and HdrHistogram precision: [{lo:.0}, {hi:.0}]); {ctx}"
    );
}

/// `29µs`, `10.20ms`, `1.50s`, `2.0m` -> µs; `-` -> None.
pub fn parse_human_us(s: &str) -> Option<f64> {
    if s == "-" {
        return None;
    }
    let (num, mult) = if let Some(n) = s.strip_suffix("µs") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 6e7)
    } else {
        panic!("not a duration: `{s}`")
    };
    Some(
        num.parse::<f64>()
            .unwrap_or_else(|_| panic!("not a duration: `{s}`"))
            * mult,
    )
}

/// One row of `tcptrace report`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    pub count: u64,
    pub p50_us: Option<f64>,
    pub max_us: Option<f64>,
}

/// `tcptrace report` output: `N log(s), M interval histograms merged`, a header, rows by tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub files: u64,
    pub intervals: u64,
    pub rows: BTreeMap<String, ReportRow>,
    /// The `(no intervals in the chosen range)` line was printed.
    pub empty_note: bool,
}

pub fn parse_report(text: &str) -> Report {
    let mut lines = text.lines();
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("report printed nothing"));
    let w: Vec<&str> = first.split_whitespace().collect();
    assert!(
        w.len() == 6 && w[1] == "log(s)," && w[3..] == ["interval", "histograms", "merged"],
        "report's first line is not `N log(s), M interval histograms merged`:\n{text}"
    );
    let files = w[0].parse().unwrap();
    let intervals = w[2].parse().unwrap();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["METRIC", "COUNT", "P50", "P90", "P99", "P99.9", "MAX"],
        "report's table header:\n{text}"
    );
    let mut rows = BTreeMap::new();
    let mut empty_note = false;
    for l in lines {
        if l == "(no intervals in the chosen range)" {
            empty_note = true;
            continue;
        }
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w.len(), 7, "report row with 7 columns: `{l}` in\n{text}");
        let count = w[1]
            .parse()
            .unwrap_or_else(|_| panic!("COUNT of `{l}` in\n{text}"));
        let prev = rows.insert(
            w[0].to_string(),
            ReportRow {
                count,
                p50_us: parse_human_us(w[2]),
                max_us: parse_human_us(w[6]),
            },
        );
        assert!(prev.is_none(), "metric {} listed twice:\n{text}", w[0]);
    }
    Report {
        files,
        intervals,
        rows,
        empty_note,
    }
}

/// One interval line of a histogram log: `Tag=T,start,length,max,histogram`.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalLine {
    pub tag: String,
    pub start_s: f64,
    pub len_s: f64,
    pub max: f64,
}

/// A histogram log, read as text.
#[derive(Debug, Clone, PartialEq)]
pub struct HdrLogText {
    pub start_time: f64,
    pub base_time: f64,
    pub intervals: Vec<IntervalLine>,
}

pub fn parse_hdr_log(text: &str) -> HdrLogText {
    let header = |name: &str| -> f64 {
        let prefix = format!("#[{name}: ");
        let l = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in the histogram log:\n{text}"));
        l[prefix.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad `{l}`"))
    };
    let mut intervals = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') || l.starts_with("\"StartTimestamp\"") {
            continue;
        }
        let f: Vec<&str> = l.split(',').collect();
        assert!(
            f.len() == 5 && f[0].starts_with("Tag="),
            "histogram log line is neither a header nor `Tag=T,start,length,max,histogram`: `{l}`"
        );
        let num = |s: &str| -> f64 { s.parse().unwrap_or_else(|_| panic!("bad number in `{l}`")) };
        intervals.push(IntervalLine {
            tag: f[0]["Tag=".len()..].to_string(),
            start_s: num(f[1]),
            len_s: num(f[2]),
            max: num(f[3]),
        });
    }
    HdrLogText {
        start_time: header("StartTime"),
        base_time: header("BaseTime"),
        intervals,
    }
}

/// The keys of the object at `ptr` in `s` (e.g. the ports of `/by_port`); panics with `ctx`
/// if there is none.
pub fn object_keys(s: &Value, ptr: &str, ctx: &str) -> Vec<String> {
    s.pointer(ptr)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no object {ptr}; {ctx}"))
        .keys()
        .cloned()
        .collect()
}

/// The histogram tags of a JSON summary with their counts, named as in the histogram log:
/// `handshake.active`, `handshake.passive`, `lifetime`, `dwell.S`, `port.P.handshake_passive`,
/// `port.P.dwell.S`. Empty histograms are left out.
pub fn summary_tags(s: &Value) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut put = |tag: String, ptr: String| {
        let h = hist(s, &ptr);
        if h.count > 0 {
            m.insert(tag, h.count);
        }
    };
    put("handshake.active".into(), "/handshake/active".into());
    put("handshake.passive".into(), "/handshake/passive".into());
    put("lifetime".into(), "/lifetime".into());
    let ctx = format!("the summary:\n{s:#}");
    let obj = |ptr: &str| object_keys(s, ptr, &ctx);
    for st in obj("/dwell") {
        put(format!("dwell.{st}"), format!("/dwell/{st}"));
    }
    for p in obj("/by_port") {
        put(
            format!("port.{p}.handshake_passive"),
            format!("/by_port/{p}/handshake_passive"),
        );
        for st in obj(&format!("/by_port/{p}/dwell")) {
            put(
                format!("port.{p}.dwell.{st}"),
                format!("/by_port/{p}/dwell/{st}"),
            );
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_lines() {
        let c = parse_closing(
            "tcptrace: 4 events received, 0 lost (ring buffer full or skipped by the kernel), 1 undecodable, 2 sockets evicted, 4.0s",
        )
        .unwrap();
        assert_eq!(c.shown, None);
        assert_eq!((c.received, c.lost, c.undecodable, c.evicted), (4, 0, 1, 2));
        let c = parse_closing(
            "tcptrace: 4 events received, 3 shown, 0 lost (ring buffer full or skipped by the kernel), 1 undecodable, 2 sockets evicted, 4.0s",
        )
        .unwrap();
        assert_eq!(c.shown, Some(3));
        let c = parse_closing(
            "tcptrace: 4 events received, 70 state changes measured in the kernel, 0 lost (ring buffer full or skipped by the kernel), 1 undecodable, 2 sockets evicted, 4.0s",
        )
        .unwrap();
        assert_eq!((c.in_kernel, c.shown, c.received), (Some(70), None, 4));
        assert!(parse_closing("tcptrace: attached 5 programs").is_none());
    }

    #[test]
    fn human_durations() {
        assert_eq!(parse_human_us("29µs"), Some(29.0));
        assert_eq!(parse_human_us("10.20ms"), Some(10_200.0));
        assert_eq!(parse_human_us("1.50s"), Some(1_500_000.0));
        assert_eq!(parse_human_us("-"), None);
    }

    #[test]
    fn report_table() {
        let r = parse_report(
            "2 log(s), 7 interval histograms merged\nMETRIC COUNT P50 P90 P99 P99.9 MAX\nhandshake.active 3 1.00s 1.00s 1.00s 1.00s 1.01s\n",
        );
        assert_eq!((r.files, r.intervals), (2, 7));
        assert_eq!(r.rows["handshake.active"].count, 3);
        assert_eq!(r.rows["handshake.active"].max_us, Some(1_010_000.0));
        assert!(!r.empty_note);
    }
}
