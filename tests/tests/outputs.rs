//! The aggregator's outputs on a real run: `watch` frames on a non-terminal, the recording and
//! its replay (same JSON summary and histogram log as the live run; damage reported with its
//! byte offset), the histogram log and `tcptrace report`, and output paths checked before
//! anything is attached.
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tcptrace_tests::cmd::Finished;
use tcptrace_tests::outputs::{
    Report, TempDir, assert_clean_watch, closing_of, drop_first, frame_table, frames, hist, int,
    parse_hdr_log, parse_report, read_summary, row_count, run_tracer, show, summary_tags,
    watch_stdout,
};
use tcptrace_tests::scenario::{STEP_TIMEOUT, exchange};
use tcptrace_tests::{EventExt, Netns, Tracer, run_ok};

/// Replays and reports of a few hundred events take milliseconds; give up after this.
const LIMIT: Duration = Duration::from_secs(30);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `tcptrace ARGS`, which must exit 0 without error lines.
fn tracer_ok(args: &[&str]) -> Finished {
    let f = run_tracer(args, LIMIT);
    assert!(
        f.status.success() && !f.stderr.contains("tcptrace: error"),
        "{}",
        show(&format!("tcptrace {args:?}"), &f)
    );
    f
}

/// `tcptrace ARGS`, which must fail with exit 1, nothing on stdout and exactly one error line
/// containing `want`. Returns the error line.
fn tracer_fails(args: &[&str], want: &str) -> String {
    let f = run_tracer(args, LIMIT);
    let ctx = show(&format!("tcptrace {args:?}"), &f);
    assert_eq!(f.status.code(), Some(1), "want exit status 1; {ctx}");
    assert!(f.stdout.is_empty(), "want nothing on stdout; {ctx}");
    let errors: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.starts_with("tcptrace: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "want one `tcptrace: error: ` line; {ctx}");
    assert!(
        errors[0].contains(want),
        "the error line should contain `{want}`; {ctx}"
    );
    errors[0].to_string()
}

fn report(args: &[&str]) -> Report {
    let mut all = vec!["report"];
    all.extend_from_slice(args);
    let f = tracer_ok(&all);
    assert!(
        f.stderr.is_empty(),
        "{}",
        show(&format!("tcptrace {all:?}"), &f)
    );
    parse_report(&f.stdout)
}

/// A connection refused: the client's SYN is answered by a RST (no listener on `port`).
fn refused(ns: &Netns, port: u16) {
    ns.run(move || {
        let e = TcpStream::connect_timeout(&addr(port), STEP_TIMEOUT)
            .expect_err("nobody listens there");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    });
}

#[test]
fn record_and_replay_reproduce_the_live_run() {
    const PORT: u16 = 22401;
    const SLOW: u16 = 22402; // first SYN dropped
    const CLOSED: u16 = 22403; // nobody listens
    let ns = Netns::new();
    drop_first(&ns, SLOW, "syn|ack", "syn");
    let dir = TempDir::new("replay");
    let (rec, s1, h1, s2, h2) = (
        dir.arg("run.rec"),
        dir.arg("live.json"),
        dir.arg("live.hlog"),
        dir.arg("replay.json"),
        dir.arg("replay.hlog"),
    );
    let interval = "300ms";
    let tracer = Tracer::start(&[
        "watch",
        "--netns",
        ns.path_str(),
        "--interval",
        interval,
        "--record",
        &rec,
        "--json-summary",
        &s1,
        "--hdr-log",
        &h1,
    ]);
    exchange(&ns, addr(PORT), Duration::from_millis(20));
    exchange(&ns, addr(PORT), Duration::from_millis(20));
    let slow = exchange(&ns, addr(SLOW), Duration::from_millis(20));
    refused(&ns, CLOSED);
    let out = tracer.stop();
    let closing = assert_clean_watch(&out);
    assert!(
        slow.connect_time() >= Duration::from_millis(995),
        "connect() to {SLOW} took {:?}: the first SYN was not dropped?",
        slow.connect_time()
    );
    let live = read_summary(&dir.file("live.json"));
    let ctx = format!("live summary:\n{live:#}");

    // The live run saw what happened.
    assert_eq!(hist(&live, "/handshake/active").count, 3, "{ctx}");
    assert_eq!(int(&live, "/retransmits/syn"), 1, "{ctx}");
    assert_eq!(
        live["handshake"]["active_by_syn_retransmits"],
        json!({"0": 2, "1": 1}),
        "{ctx}"
    );
    assert_eq!(
        int(&live, "/resets/received_by_state/SYN_SENT"),
        1,
        "connection refused; {ctx}"
    );
    assert_eq!(
        int(&live, "/events/received"),
        closing.received,
        "events.received vs. the closing line:\n{}\n{ctx}",
        out.stderr
    );

    // The recording: a 64-byte header, one 96-byte record per event received, a trailer.
    let bytes = std::fs::read(dir.file("run.rec")).unwrap();
    assert!(
        bytes.len() >= 64 + 96 && (bytes.len() - 64).is_multiple_of(96),
        "recording of {} bytes is not a 64-byte header plus 96-byte records",
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"TCPTRACE", "magic");
    assert_eq!(bytes[8..12], 1u32.to_le_bytes(), "version");
    assert_eq!(bytes[12..16], 96u32.to_le_bytes(), "record size");
    assert_eq!(bytes[32], 0, "passive method sock_ops");
    assert_eq!(bytes[bytes.len() - 96 + 93], 255, "trailer kind byte");
    // Kind bytes below 250 are events; 250..=254 are the sock_diag snapshots and owners.
    let kinds: Vec<u8> = bytes[64..bytes.len() - 96]
        .chunks(96)
        .map(|r| r[93])
        .collect();
    let events = kinds.iter().filter(|&&k| k < 250).count() as u64;
    assert_eq!(
        events, closing.received,
        "every event received is recorded (the recording is not filtered); {ctx}"
    );
    assert!(
        kinds
            .iter()
            .all(|&k| (1..=8).contains(&k) || (250..=254).contains(&k)),
        "unknown kind bytes in the recording: {kinds:?}"
    );

    // Replay with the same filter and interval: the same summary and histogram log.
    let inode = ns.inode().to_string();
    let r = tracer_ok(&[
        "replay",
        &rec,
        "--netns",
        &inode,
        "--interval",
        interval,
        "--json-summary",
        &s2,
        "--hdr-log",
        &h2,
    ]);
    let replayed = read_summary(&dir.file("replay.json"));
    assert_eq!(
        replayed, live,
        "the replay's JSON summary differs from the live run's:\nreplay:\n{replayed:#}\n{ctx}"
    );
    assert_eq!(
        closing_of(&r.stderr).received,
        closing.received,
        "replay's closing line:\n{}",
        r.stderr
    );
    let (l1, l2) = (
        std::fs::read_to_string(dir.file("live.hlog")).unwrap(),
        std::fs::read_to_string(dir.file("replay.hlog")).unwrap(),
    );
    assert!(
        l1.lines().any(|l| l.starts_with("Tag=handshake.active,")),
        "live histogram log without handshake.active:\n{l1}"
    );
    assert_eq!(
        l2, l1,
        "the replay's histogram log differs from the live run's"
    );
    assert_eq!(
        std::fs::read_to_string(dir.file("replay.hlog.hgrm")).unwrap(),
        std::fs::read_to_string(dir.file("live.hlog.hgrm")).unwrap(),
        "the replay's .hgrm differs from the live run's"
    );

    // The replay prints the final view: its tables are those of the live run's last frame.
    let live_frames = frames(watch_stdout(&out));
    let last = live_frames.last().expect("the live run printed frames");
    let replay_lines: Vec<String> = r.stdout.lines().map(str::to_string).collect();
    let rf = frames(&replay_lines);
    assert_eq!(rf.len(), 1, "replay prints one view:\n{}", r.stdout);
    for table in ["HANDSHAKE", "TIME IN STATE"] {
        assert_eq!(
            frame_table(&rf[0], table),
            frame_table(last, table),
            "{table} table: replay vs. the live run's last frame\nreplay:\n{}\nlive:\n{}",
            r.stdout,
            last.join("\n")
        );
    }

    // `replay --events --json` with the filter prints exactly the events the summary counted.
    let ev = tracer_ok(&[
        "replay",
        &rec,
        "--netns",
        ns.path_str(),
        "--events",
        "--json",
    ]);
    let lines: Vec<Value> = ev
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        lines.len() as u64,
        int(&live, "/events/matched"),
        "replay --events --json lines vs. events.matched; {ctx}"
    );
    assert!(
        lines.iter().all(|e| e.netns() == Some(ns.inode())),
        "replayed events from another namespace:\n{}",
        ev.stdout
    );

    // Damage is reported with its byte offset, exit 1, nothing half-written.
    let n = bytes.len();
    let write = |name: &str, b: &[u8]| -> String {
        std::fs::write(dir.file(name), b).unwrap();
        dir.arg(name)
    };
    let cut = write("cut.rec", &bytes[..n - 50]);
    let bad_json = dir.arg("bad.json");
    let line = tracer_fails(
        &["replay", &cut, "--json-summary", &bad_json],
        &format!("truncated at offset {}", n - 96),
    );
    assert!(line.contains("offset"), "{line}");
    assert!(
        !dir.file("bad.json").exists() && !dir.names().iter().any(|f| f.contains("bad.json")),
        "a failed replay left a JSON summary behind: {:?}",
        dir.names()
    );
    let no_trailer = write("notrailer.rec", &bytes[..n - 96]);
    let line = tracer_fails(&["replay", &no_trailer], &format!("offset {}", n - 96));
    assert!(line.contains("no trailer"), "{line}");
    let mut corrupt = bytes.clone();
    let first_event = 64
        + 96 * kinds
            .iter()
            .position(|&k| k < 250)
            .expect("an event record");
    corrupt[first_event + 93] = 200; // the first event's kind byte
    let corrupt = write("corrupt.rec", &corrupt);
    tracer_fails(
        &["replay", &corrupt],
        &format!("corrupt record at offset {first_event}"),
    );
    let mut extra = bytes.clone();
    extra.extend_from_slice(b"junk");
    let extra = write("extra.rec", &extra);
    tracer_fails(&["replay", &extra], "data after the trailer");
    tracer_fails(&["replay", &s1], "not a tcptrace recording");
}

/// Wall-clock seconds since the epoch.
fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn hdr_log_and_report() {
    const PORT: u16 = 22501;
    let ns = Netns::new();
    let dir = TempDir::new("hdrlog");
    let (h, s) = (dir.arg("run.hlog"), dir.arg("run.json"));
    let before_start = wall();
    let tracer = Tracer::events(&[
        "--netns",
        ns.path_str(),
        "--interval",
        "200ms",
        "--hdr-log",
        &h,
        "--json-summary",
        &s,
    ]);
    let ready = tracer.ready_at();
    // One connection at once, another a second later: in intervals far apart.
    exchange(&ns, addr(PORT), Duration::from_millis(20));
    let first_done = wall();
    thread::sleep(Duration::from_millis(1000).saturating_sub(ready.elapsed()));
    let second_start = wall();
    exchange(&ns, addr(PORT), Duration::from_millis(20));
    let out = tracer.stop();
    out.assert_clean();
    let sum = read_summary(&dir.file("run.json"));
    let tags = summary_tags(&sum);
    let ctx = format!("summary:\n{sum:#}");
    assert_eq!(tags.get("handshake.active"), Some(&2), "{ctx}");
    assert!(tags.contains_key("dwell.CLOSE_WAIT"), "{ctx}");

    // The log: headers, then one line per interval and tag.
    let text = std::fs::read_to_string(dir.file("run.hlog")).unwrap();
    let log = parse_hdr_log(&text);
    let ctx = format!("{ctx}\nhistogram log:\n{text}");
    assert!(
        log.start_time >= before_start - 1.0 && log.start_time <= first_done,
        "StartTime {} is not when the run started (between {before_start:.3} and {first_done:.3}); {ctx}",
        log.start_time
    );
    assert_eq!(
        log.base_time, log.start_time,
        "BaseTime vs. StartTime; {ctx}"
    );
    for iv in &log.intervals {
        let k = iv.start_s / 0.2;
        assert!(
            iv.len_s > 0.0 && iv.len_s <= 0.2 + 1e-9 && (k - k.round()).abs() < 0.02,
            "interval {iv:?} is not within one 200 ms step; {ctx}"
        );
    }
    let log_tags: std::collections::BTreeSet<&str> =
        log.intervals.iter().map(|i| i.tag.as_str()).collect();
    let sum_tags: std::collections::BTreeSet<&str> = tags.keys().map(String::as_str).collect();
    assert_eq!(
        log_tags, sum_tags,
        "tags in the log vs. non-empty histograms; {ctx}"
    );
    // Interval_Max (µs): the largest over a tag's intervals is the run's max.
    for tag in tags.keys() {
        let max = log
            .intervals
            .iter()
            .filter(|i| &i.tag == tag)
            .map(|i| i.max)
            .fold(0.0, f64::max);
        let ptr = summary_ptr(tag);
        let want = hist(&sum, &ptr).max() as f64;
        assert_eq!(
            max, want,
            "{tag}: largest Interval_Max vs. {ptr}.max_us; {ctx}"
        );
    }
    // The second connection is more than 0.6 s into the log, the first well before.
    let (first_off, second_off) = (first_done - log.start_time, second_start - log.start_time);
    assert!(
        first_off < 0.3 && second_off > 0.9,
        "the test's timing went wrong (first connection done {first_off:.3} s, second started \
         {second_off:.3} s after StartTime): cannot check --from/--to"
    );

    // The percentile distributions at exit: a section per metric with its total count.
    let hgrm = std::fs::read_to_string(dir.file("run.hlog.hgrm")).unwrap();
    for (tag, count) in &tags {
        let sec = hgrm
            .split("\n# ")
            .map(|s| s.trim_start_matches("# "))
            .find(|s| s.lines().next() == Some(tag.as_str()))
            .unwrap_or_else(|| panic!("no section `# {tag}` in the .hgrm:\n{hgrm}"));
        let total = sec
            .lines()
            .find_map(|l| l.split("Total count").nth(1))
            .and_then(|t| {
                t.trim_start_matches([' ', '='])
                    .trim_end_matches(']')
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no `Total count` in section {tag}:\n{sec}"));
        assert_eq!(
            total, *count,
            "{tag}: .hgrm total count; {ctx}\n.hgrm:\n{hgrm}"
        );
    }

    // report: every metric with the summary's count and figures.
    let one = report(&[&h]);
    assert_eq!(one.files, 1);
    assert_eq!(
        one.intervals,
        log.intervals.len() as u64,
        "intervals merged vs. lines in the log; {ctx}"
    );
    let counts: std::collections::BTreeMap<String, u64> =
        one.rows.iter().map(|(k, r)| (k.clone(), r.count)).collect();
    assert_eq!(counts, tags, "report's counts vs. the JSON summary; {ctx}");
    for (tag, row) in &one.rows {
        let hs = hist(&sum, &summary_ptr(tag));
        for (what, got, want) in [("P50", row.p50_us, hs.p50()), ("MAX", row.max_us, hs.max())] {
            let got = got.unwrap_or_else(|| panic!("{tag}: no {what} in the report"));
            let want = want as f64;
            assert!(
                (got - want).abs() <= (want * 0.005).max(1.0),
                "{tag}: report {what} {got} µs vs. summary {want} µs; {ctx}"
            );
        }
    }
    // Merging a log with itself doubles every count.
    let two = report(&[&h, &h]);
    assert_eq!((two.files, two.intervals), (2, 2 * one.intervals));
    for (tag, row) in &one.rows {
        assert_eq!(two.rows[tag].count, 2 * row.count, "{tag} merged twice");
    }
    // --tag selects metrics by name.
    let cw = report(&[&h, "--tag", "dwell.CLOSE_WAIT"]);
    assert_eq!(cw.rows["dwell.CLOSE_WAIT"].count, tags["dwell.CLOSE_WAIT"]);
    assert!(
        cw.rows.keys().all(|k| k.contains("dwell.CLOSE_WAIT")),
        "--tag dwell.CLOSE_WAIT listed other metrics: {:?}",
        cw.rows.keys()
    );
    let ha = report(&[&h, "--tag", "handshake.active"]);
    assert_eq!(
        ha.rows.keys().collect::<Vec<_>>(),
        ["handshake.active"],
        "--tag handshake.active"
    );
    // --from/--to: offsets from the log's start, or times.
    let none = report(&[&h, "--from", "1h"]);
    assert_eq!(none.intervals, 0, "--from 1h");
    assert!(
        none.rows.is_empty() && none.empty_note,
        "--from 1h: {none:?}"
    );
    let late = report(&[&h, "--from", "600ms"]);
    let early = report(&[&h, "--to", "600ms"]);
    assert_eq!(
        late.rows["handshake.active"].count, 1,
        "--from 600ms: {late:?}"
    );
    assert_eq!(
        early.rows["handshake.active"].count, 1,
        "--to 600ms: {early:?}"
    );
    assert_eq!(
        late.intervals + early.intervals,
        one.intervals,
        "--from and --to at the same point split the intervals"
    );
    let at = rfc3339(log.start_time + 0.6);
    let late_at = report(&[&h, "--from", &at]);
    assert_eq!(late_at, late, "--from {at} vs. --from 600ms");
}

/// The JSON summary pointer of a histogram-log tag.
fn summary_ptr(tag: &str) -> String {
    match tag.split('.').collect::<Vec<_>>()[..] {
        ["handshake", "active"] => "/handshake/active".into(),
        ["handshake", "passive"] => "/handshake/passive".into(),
        ["lifetime"] => "/lifetime".into(),
        ["dwell", st] => format!("/dwell/{st}"),
        ["port", p, "handshake_passive"] => format!("/by_port/{p}/handshake_passive"),
        ["port", p, "dwell", st] => format!("/by_port/{p}/dwell/{st}"),
        _ => panic!("unknown histogram tag {tag}"),
    }
}

/// `secs` since the epoch as RFC 3339 UTC with milliseconds.
fn rfc3339(secs: f64) -> String {
    let out = run_ok(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{secs:.3}"),
        "+%Y-%m-%dT%H:%M:%S.%3NZ",
    ]));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn watch_prints_plain_frames_when_not_a_tty() {
    const PORT: u16 = 22601;
    let ns = Netns::new();
    let dir = TempDir::new("watch");
    let s = dir.arg("watch.json");
    let tracer = Tracer::start(&[
        "watch",
        "--interval",
        "500ms",
        "--duration",
        "2s",
        "--netns",
        ns.path_str(),
        "--json-summary",
        &s,
    ]);
    exchange(&ns, addr(PORT), Duration::from_millis(20));
    let out = tracer.wait_exit(Duration::from_secs(10));
    assert_clean_watch(&out);
    let ran = out.exited - out.ready;
    assert!(
        us(ran) >= 1.9e6 && us(ran) <= 4e6,
        "--duration 2s: exited {ran:?} after attaching; stderr:\n{}",
        out.stderr
    );
    let lines = watch_stdout(&out);
    let text = lines.join("\n");
    assert!(
        !text.contains('\x1b'),
        "terminal escapes on a non-terminal:\n{text}"
    );
    let fs = frames(lines);
    assert!(
        fs[0][0].starts_with("tcptrace watch"),
        "stdout does not start with a frame:\n{text}"
    );
    assert!(
        (3..=6).contains(&fs.len()),
        "{} frames in 2 s at --interval 500ms (want 3 to 6):\n{text}",
        fs.len()
    );
    for f in &fs {
        for want in ["HANDSHAKE", "TIME IN STATE", "RETRANSMITS/s", "RESETS"] {
            assert!(
                f.iter().any(|l| l.starts_with(want)),
                "a frame without {want}:\n{}",
                f.join("\n")
            );
        }
    }
    // The last frame shows the run's final figures: those of the JSON summary.
    let sum = read_summary(&dir.file("watch.json"));
    let last = fs.last().unwrap();
    let ctx = format!("last frame:\n{}\nsummary:\n{sum:#}", last.join("\n"));
    let hs = frame_table(last, "HANDSHAKE");
    assert_eq!(row_count(&hs, "active"), Some(1), "{ctx}");
    // The row names the method: `passive(sock_ops)`, or `passive(srtt)` for the fallback.
    let passive = row_count(&hs, "passive(sock_ops)").or_else(|| row_count(&hs, "passive(srtt)"));
    assert_eq!(passive, Some(1), "{ctx}");
    let tis = frame_table(last, "TIME IN STATE");
    let dwell = sum["dwell"].as_object().expect("dwell object");
    assert!(!dwell.is_empty(), "{ctx}");
    for st in dwell.keys() {
        assert_eq!(
            row_count(&tis, st),
            Some(hist(&sum, &format!("/dwell/{st}")).count),
            "TIME IN STATE {st}; {ctx}"
        );
    }
    assert_eq!(
        row_count(&tis, "(lifetime)"),
        Some(hist(&sum, "/lifetime").count),
        "{ctx}"
    );
}

#[test]
fn unwritable_outputs_fail_before_attaching() {
    let dir = TempDir::new("unwritable");
    std::fs::create_dir(dir.file("h.hlog.hgrm")).unwrap();
    std::os::unix::fs::symlink(dir.file("target"), dir.file("link")).unwrap();
    let (hgrm_blocked, link) = (dir.arg("h.hlog"), dir.arg("link"));
    let a_dir = dir.path().to_str().unwrap().to_string();
    let cases: [(&[&str], &str); 6] = [
        (
            &["watch", "--json-summary", "/nonexistent-dir/x.json"],
            "/nonexistent-dir/x.json",
        ),
        (
            &["watch", "--hdr-log", "/nonexistent-dir/x.hlog"],
            "/nonexistent-dir/x.hlog",
        ),
        (
            &["events", "--json", "--record", "/nonexistent-dir/x.rec"],
            "/nonexistent-dir/x.rec",
        ),
        (&["watch", "--hdr-log", &hgrm_blocked], "h.hlog.hgrm"),
        (&["watch", "--record", &link], "link"),
        (&["watch", "--json-summary", &a_dir], "directory"),
    ];
    for (args, want) in cases {
        // If it does not fail, it stops by itself (and the test fails below).
        let mut all = args.to_vec();
        all.extend_from_slice(&["--duration", "3s"]);
        let f = run_tracer(&all, LIMIT);
        let ctx = show(&format!("tcptrace {all:?}"), &f);
        assert_eq!(f.status.code(), Some(1), "want exit status 1; {ctx}");
        assert!(f.stdout.is_empty(), "want nothing on stdout; {ctx}");
        assert!(!f.stderr.contains("attached"), "it attached probes; {ctx}");
        let errors: Vec<&str> = f.stderr.lines().collect();
        assert!(
            errors.len() == 1 && errors[0].starts_with("tcptrace: error: "),
            "want exactly one line on stderr, an error; {ctx}"
        );
        assert!(
            errors[0].contains(want),
            "the error should name `{want}`; {ctx}"
        );
    }
    assert!(
        !dir.file("target").exists(),
        "--record followed a symlink and created its target"
    );
    assert!(
        !dir.file("h.hlog").exists(),
        "--hdr-log created its log although its .hgrm cannot be written"
    );
}

/// TCP states in the kernel's numbering (what a recording stores).
mod st {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const CLOSE: u8 = 7;
}
const KIND_STATE: u8 = 1;
const KIND_RETRANSMIT: u8 = 2;
const SYNTH_NETNS: u32 = 4_026_531_999;
const S: u64 = 1_000_000_000;

/// One 96-byte record in the documented `RawEvent` layout: a socket of 10.0.0.1:`lport` talking
/// to 10.0.0.2:80 in namespace [`SYNTH_NETNS`].
fn raw(ts_ns: u64, kind: u8, old: u8, new: u8, lport: u16) -> [u8; 96] {
    let mut r = [0u8; 96];
    r[0..8].copy_from_slice(&ts_ns.to_le_bytes());
    r[8..16].copy_from_slice(&0xffff_8880_0000_1000u64.to_le_bytes()); // skaddr
    r[24..28].copy_from_slice(&[10, 0, 0, 1]); // saddr
    r[40..44].copy_from_slice(&[10, 0, 0, 2]); // daddr
    r[56..65].copy_from_slice(b"synthetic"); // comm
    r[72..76].copy_from_slice(&4242u32.to_le_bytes()); // tgid
    r[76..80].copy_from_slice(&4242u32.to_le_bytes()); // tid
    r[80..84].copy_from_slice(&SYNTH_NETNS.to_le_bytes());
    r[88..90].copy_from_slice(&lport.to_le_bytes()); // sport
    r[90..92].copy_from_slice(&80u16.to_le_bytes()); // dport
    r[92] = 2; // AF_INET
    r[93] = kind;
    r[94] = old;
    r[95] = new;
    r
}

/// A recording made by hand from the README's description: header, records, trailer. Tracing
/// from 1 s to 5 s; one client connection whose SYN was retransmitted once.
fn synthetic_recording() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"TCPTRACE");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&96u32.to_le_bytes());
    b.extend_from_slice(&S.to_le_bytes()); // start
    b.extend_from_slice(&(1_700_000_000 * S as i64).to_le_bytes()); // wall-clock offset
    b.push(0); // sock_ops
    b.resize(64, 0);
    for r in [
        raw(S + S / 10, KIND_STATE, st::CLOSE, st::SYN_SENT, 0),
        raw(2 * S + S / 10, KIND_RETRANSMIT, 0, st::SYN_SENT, 40000),
        raw(
            2 * S + 6 * S / 10,
            KIND_STATE,
            st::SYN_SENT,
            st::ESTABLISHED,
            40000,
        ),
        raw(
            3 * S + S / 10,
            KIND_STATE,
            st::ESTABLISHED,
            st::FIN_WAIT1,
            40000,
        ),
        raw(
            3 * S + 2 * S / 10,
            KIND_STATE,
            st::FIN_WAIT1,
            st::FIN_WAIT2,
            40000,
        ),
        raw(
            3 * S + 3 * S / 10,
            KIND_STATE,
            st::FIN_WAIT2,
            st::CLOSE,
            40000,
        ),
    ] {
        b.extend_from_slice(&r);
    }
    let mut t = [0u8; 96];
    t[0..8].copy_from_slice(&(5 * S).to_le_bytes());
    t[93] = 255;
    b.extend_from_slice(&t);
    b
}

#[test]
fn replay_of_a_handmade_recording() {
    let dir = TempDir::new("synthetic");
    std::fs::write(dir.file("s.rec"), synthetic_recording()).unwrap();
    let (rec, sj) = (dir.arg("s.rec"), dir.arg("s.json"));
    let netns = SYNTH_NETNS.to_string();
    let r = tracer_ok(&["replay", &rec, "--netns", &netns, "--json-summary", &sj]);
    let s = read_summary(&dir.file("s.json"));
    let ctx = format!("summary:\n{s:#}\nreplay stdout:\n{}", r.stdout);
    assert_eq!(
        s["duration_s"],
        json!(4.0),
        "duration_s (trailer - start); {ctx}"
    );
    assert_eq!(int(&s, "/events/received"), 6, "{ctx}");
    assert_eq!(int(&s, "/events/matched"), 6, "{ctx}");
    let near = |what: &str, ptr: &str, want_us: u64| {
        let h = hist(&s, ptr);
        assert_eq!(h.count, 1, "{what}.count; {ctx}");
        for v in [h.min(), h.max(), h.p50()] {
            assert!(
                (v as f64 - want_us as f64).abs() <= want_us as f64 / 1000.0 + 1.0,
                "{what}: {h:?}, want {want_us} µs; {ctx}"
            );
        }
    };
    near("handshake.active", "/handshake/active", 1_500_000);
    near("dwell.SYN_SENT", "/dwell/SYN_SENT", 1_500_000);
    near("dwell.ESTABLISHED", "/dwell/ESTABLISHED", 500_000);
    near("dwell.FIN_WAIT1", "/dwell/FIN_WAIT1", 100_000);
    near("dwell.FIN_WAIT2", "/dwell/FIN_WAIT2", 100_000);
    near("lifetime", "/lifetime", 2_200_000);
    near(
        "active_by_remote_port.80",
        "/handshake/active_by_remote_port/80",
        1_500_000,
    );
    assert_eq!(
        s["handshake"]["active_by_syn_retransmits"],
        json!({"1": 1}),
        "{ctx}"
    );
    assert_eq!(int(&s, "/retransmits/syn"), 1, "{ctx}");
    assert_eq!(hist(&s, "/handshake/passive").count, 0, "{ctx}");
    assert_eq!(s["handshake"]["passive_method"], json!("sock_ops"), "{ctx}");
    assert_eq!(int(&s, "/connections/active_opens"), 1, "{ctx}");
    assert_eq!(int(&s, "/connections/closed"), 1, "{ctx}");
    assert_eq!(s["by_port"], json!({}), "no accepted sockets; {ctx}");

    // Filters apply to a replay as to a live run.
    for (args, matched) in [
        (&["-p", "80"][..], 6),
        (&["-p", "81"][..], 0),
        (&["--netns", "1"][..], 0),
        (&["-6"][..], 0),
    ] {
        let mut all = vec!["replay", &rec, "--json-summary", &sj];
        all.extend_from_slice(args);
        tracer_ok(&all);
        let s = read_summary(&dir.file("s.json"));
        assert_eq!(int(&s, "/events/received"), 6, "{args:?}:\n{s:#}");
        assert_eq!(int(&s, "/events/matched"), matched, "{args:?}:\n{s:#}");
        assert_eq!(
            hist(&s, "/handshake/active").count,
            matched.min(1),
            "{args:?}:\n{s:#}"
        );
    }
}

/// The byte offset just past the `n`th (from 0) whitespace-separated token of `line`.
fn token_end(line: &str, n: usize) -> usize {
    let mut in_token = false;
    let mut seen = 0;
    for (i, c) in line.char_indices() {
        if c.is_whitespace() {
            if in_token {
                if seen == n {
                    return i;
                }
                seen += 1;
            }
            in_token = false;
        } else {
            in_token = true;
        }
    }
    assert!(in_token && seen == n, "no token {n} in `{line}`");
    line.len()
}

#[test]
fn view_columns_line_up() {
    let dir = TempDir::new("columns");
    std::fs::write(dir.file("s.rec"), synthetic_recording()).unwrap();
    let r = tracer_ok(&["replay", &dir.arg("s.rec")]);
    let lines: Vec<String> = r.stdout.lines().map(str::to_string).collect();
    let fs = frames(&lines);
    assert_eq!(fs.len(), 1, "one view:\n{}", r.stdout);
    for l in &lines {
        assert!(
            l.chars().count() <= 80,
            "wider than 80 columns: `{l}`\n{}",
            r.stdout
        );
    }
    for name in ["HANDSHAKE", "TIME IN STATE"] {
        let t = frame_table(&fs[0], name);
        // Where the header's COUNT ends, every row's count ends.
        let end = t[0].find(" COUNT").expect("a COUNT column") + " COUNT".len();
        for row in &t[1..] {
            let count_end = token_end(row, 1);
            assert_eq!(
                count_end,
                end,
                "{name}: the COUNT of `{row}` does not line up with the header:\n{}",
                t.join("\n")
            );
        }
    }
}
