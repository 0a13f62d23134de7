//! The aggregator's measurements against ground truth: real connections in a private namespace
//! (made slow on purpose with nftables or by the application), the tracer's JSON summary
//! compared with the kernel's counters and the test's own clock.
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tcptrace_tests::diag::sysctl_set;
use tcptrace_tests::outputs::{
    BUCKET, TempDir, assert_between_us, assert_clean_watch, drop_first, hdr_tol_us, hist, int,
    read_summary,
};
use tcptrace_tests::scenario::{
    CLIENT_THREAD, Held, SERVER_THREAD, STEP_TIMEOUT, accept_timeout, held_connection, join, us,
};
use tcptrace_tests::{Counters, EventExt, Netns, Tracer, describe_all};

/// The initial retransmission timeout is 1 s; a timer may fire a few jiffies early.
const RTO_MIN_US: u64 = 995_000;
/// How far the test's clock around a syscall may be from the kernel's timestamps inside it
/// (thread wake-ups, scheduling on a busy machine).
const SLACK_US: f64 = 5_000.0;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Inside the calling thread's namespace: `n` clients connect to `addr` at the same time and
/// close at once; a server accepts them all and reads each to EOF. Returns each client's local
/// address and how long its connect() took.
fn concurrent_connects(addr: SocketAddr, n: usize) -> Vec<(SocketAddr, Duration)> {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    // Clients close only once the server has accepted every connection: a client closing while
    // its connection waits in the accept queue can make the kernel build (and drop) a second
    // server socket, an extra passive open the counts below would have to allow for.
    let accepted = std::sync::Barrier::new(n + 1);
    let r = thread::scope(|s| {
        let (l, accepted) = (&listener, &accepted);
        let server = thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn_scoped(s, move || {
                let conns: Vec<TcpStream> =
                    (0..n).map(|_| accept_timeout(l, STEP_TIMEOUT).0).collect();
                accepted.wait();
                for mut c in conns {
                    c.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                    let mut buf = Vec::new();
                    c.read_to_end(&mut buf).expect("server read to EOF");
                }
            })
            .unwrap();
        let clients: Vec<_> = (0..n)
            .map(|_| {
                thread::Builder::new()
                    .name(CLIENT_THREAD.into())
                    .spawn_scoped(s, move || {
                        let t0 = Instant::now();
                        let c = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
                            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
                        let t = t0.elapsed();
                        accepted.wait();
                        let local = c.local_addr().unwrap();
                        drop(c);
                        (local, t)
                    })
                    .unwrap()
            })
            .collect();
        let r: Vec<_> = clients.into_iter().map(join).collect();
        join(server);
        r
    });
    drop(listener);
    r
}

#[test]
fn dropped_first_syns_make_one_second_active_handshakes() {
    const N: usize = 5;
    const PORT: u16 = 22101;
    let ns = Netns::new();
    drop_first(&ns, PORT, "syn|ack", "syn");
    let dir = TempDir::new("syn");
    let sum = dir.arg("summary.json");
    let before = Counters::read(&ns);
    let tracer = Tracer::events(&["--netns", ns.path_str(), "--json-summary", &sum]);
    let clients = ns.run(move || concurrent_connects(addr(PORT), N));
    let out = tracer.stop();
    let after = Counters::read(&ns);
    out.assert_clean();
    let s = read_summary(&dir.file("summary.json"));
    let ctx = format!("summary:\n{s:#}\nclients (local, connect time): {clients:?}");

    // Ground truth: every first SYN was dropped, so every connect() waited for the 1 s RTO.
    for (local, t) in &clients {
        assert!(
            us(*t) >= RTO_MIN_US as f64,
            "connect() from {local} took {t:?}: its first SYN was not dropped?"
        );
    }
    assert_eq!(
        before.delta(&after, "Tcp.RetransSegs"),
        N as i64,
        "kernel's retransmit count in the namespace"
    );

    let active = hist(&s, "/handshake/active");
    assert_eq!(active.count, N as u64, "handshake.active.count; {ctx}");
    assert!(
        active.min() >= RTO_MIN_US && active.p50() >= RTO_MIN_US,
        "every active handshake took >= 1 s (min {} µs, p50 {} µs); {ctx}",
        active.min(),
        active.p50()
    );
    assert_eq!(
        int(&s, "/retransmits/syn"),
        N as u64,
        "retransmits.syn; {ctx}"
    );
    assert_eq!(
        int(&s, "/retransmits/synack"),
        0,
        "retransmits.synack; {ctx}"
    );
    assert_eq!(
        int(&s, "/retransmits/total"),
        N as u64,
        "retransmits.total; {ctx}"
    );
    assert_eq!(
        s["handshake"]["active_by_syn_retransmits"],
        json!({ "1": N }),
        "handshake.active_by_syn_retransmits; {ctx}"
    );
    let by_rport = hist(&s, &format!("/handshake/active_by_remote_port/{PORT}"));
    assert_eq!(by_rport, active, "active_by_remote_port.{PORT}; {ctx}");
    assert_eq!(int(&s, "/connections/active_opens"), N as u64, "{ctx}");
    assert_eq!(int(&s, "/connections/passive_opens"), N as u64, "{ctx}");

    // The tracer's handshake lies inside the client's connect(): not longer, and at most a
    // scheduling delay shorter.
    let times: Vec<f64> = clients.iter().map(|(_, t)| us(*t)).collect();
    let min_ct = times.iter().cloned().fold(f64::MAX, f64::min);
    let max_ct = times.iter().cloned().fold(0.0, f64::max);
    let mean_ct = times.iter().sum::<f64>() / N as f64;
    let near = 50_000.0;
    assert_between_us(
        "handshake.active.min",
        active.min(),
        min_ct - near,
        min_ct,
        0.0,
        &ctx,
    );
    assert_between_us(
        "handshake.active.max",
        active.max(),
        max_ct - near,
        max_ct,
        0.0,
        &ctx,
    );
    let mean = active.mean();
    assert!(
        mean >= mean_ct - near - hdr_tol_us(mean_ct) && mean <= mean_ct + hdr_tol_us(mean_ct),
        "handshake.active.mean {mean} µs vs. the clients' mean connect() {mean_ct:.0} µs; {ctx}"
    );
    // And connection by connection, through the events of the same run.
    for (local, t) in &clients {
        let e = out
            .events
            .iter()
            .find(|e| {
                e.is_transition("SYN_SENT", "ESTABLISHED") && e.lport() == Some(local.port() as u64)
            })
            .unwrap_or_else(|| out.fail(&format!("no SYN_SENT -> ESTABLISHED from {local}")));
        let d = e.f64_of("dwell_ms").expect("dwell_ms") * 1e3;
        assert!(
            d <= us(*t) + 1.0 && d >= us(*t) - near,
            "{local}: SYN_SENT dwell {d:.0} µs vs. connect() {:.0} µs; {ctx}",
            us(*t)
        );
    }

    // The server never saw the dropped SYNs: its handshakes are short.
    let passive = hist(&s, "/handshake/passive");
    assert_eq!(passive.count, N as u64, "handshake.passive.count; {ctx}");
    assert!(
        passive.max() < 100_000,
        "passive handshakes are not slowed by SYNs the server never saw; {ctx}"
    );
    assert_eq!(
        hist(&s, &format!("/by_port/{PORT}/handshake_passive")),
        passive,
        "by_port.{PORT}.handshake_passive; {ctx}"
    );
}

#[test]
fn dwell_in_established_and_close_wait() {
    // One connection per listening port, all at once, each held for different times.
    const CASES: [(u16, u64, u64); 3] = [(22201, 200, 500), (22202, 300, 350), (22203, 400, 250)];
    let ns = Netns::new();
    let dir = TempDir::new("dwell");
    let sum = dir.arg("summary.json");
    let tracer = Tracer::events(&["--netns", ns.path_str(), "--json-summary", &sum]);
    let held: Vec<Held> = ns.run(|| {
        thread::scope(|s| {
            let hs: Vec<_> = CASES
                .iter()
                .map(|&(port, est, cw)| {
                    s.spawn(move || {
                        held_connection(port, Duration::from_millis(est), Duration::from_millis(cw))
                    })
                })
                .collect();
            hs.into_iter().map(join).collect()
        })
    });
    let out = tracer.stop();
    out.assert_clean();
    let s = read_summary(&dir.file("summary.json"));
    let ctx = format!("summary:\n{s:#}");

    // by_port holds the accepted sockets, keyed by their local (listening) port, and only them.
    let ports: Vec<String> = s["by_port"]
        .as_object()
        .unwrap_or_else(|| panic!("no by_port object; {ctx}"))
        .keys()
        .cloned()
        .collect();
    let want: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    assert_eq!(ports, want, "by_port keys; {ctx}");

    let mut cw_values = Vec::new();
    let mut est_bounds = Vec::new();
    for h in &held {
        let p = h.port;
        let states: Vec<&String> = s["by_port"][p.to_string()]["dwell"]
            .as_object()
            .unwrap_or_else(|| panic!("no by_port.{p}.dwell; {ctx}"))
            .keys()
            .collect();
        assert_eq!(
            states,
            ["CLOSE_WAIT", "ESTABLISHED", "LAST_ACK", "SYN_RECV"],
            "by_port.{p}.dwell has the server's states only; {ctx}"
        );
        let est = hist(&s, &format!("/by_port/{p}/dwell/ESTABLISHED"));
        let cw = hist(&s, &format!("/by_port/{p}/dwell/CLOSE_WAIT"));
        assert_eq!(est.count, 1, "by_port.{p}.dwell.ESTABLISHED.count; {ctx}");
        assert_eq!(cw.count, 1, "by_port.{p}.dwell.CLOSE_WAIT.count; {ctx}");
        let (lo, hi) = h.established();
        let what = format!("by_port.{p}.dwell.ESTABLISHED");
        assert_between_us(&format!("{what}.min"), est.min(), lo, hi, SLACK_US, &ctx);
        assert_between_us(&format!("{what}.max"), est.max(), lo, hi, SLACK_US, &ctx);
        let (lo, hi) = h.close_wait();
        let what = format!("by_port.{p}.dwell.CLOSE_WAIT");
        assert_between_us(&format!("{what}.min"), cw.min(), lo, hi, SLACK_US, &ctx);
        assert_between_us(&format!("{what}.max"), cw.max(), lo, hi, SLACK_US, &ctx);
        cw_values.push((cw.min(), cw.max()));
        est_bounds.push(h.established());
        est_bounds.push(h.client_established());

        // The same figure as the event stream's dwell_ms of the server socket.
        let ev = out
            .events
            .iter()
            .find(|e| e.is_transition("ESTABLISHED", "CLOSE_WAIT") && e.lport() == Some(p as u64))
            .unwrap_or_else(|| out.fail(&format!("no ESTABLISHED -> CLOSE_WAIT on port {p}")));
        let d = ev.f64_of("dwell_ms").expect("dwell_ms") * 1e3;
        assert!(
            (d - est.max() as f64).abs() <= hdr_tol_us(d),
            "port {p}: ESTABLISHED dwell {d:.0} µs in the events vs. {} µs in the summary; {ctx}",
            est.max()
        );
    }

    // Overall: only the three servers were ever in CLOSE_WAIT (the clients closed first).
    let cw = hist(&s, "/dwell/CLOSE_WAIT");
    assert_eq!(cw.count, 3, "dwell.CLOSE_WAIT.count; {ctx}");
    let per_port_min = cw_values.iter().map(|v| v.0).min().unwrap();
    let per_port_max = cw_values.iter().map(|v| v.1).max().unwrap();
    assert_eq!(cw.min(), per_port_min, "dwell.CLOSE_WAIT.min; {ctx}");
    assert_eq!(cw.max(), per_port_max, "dwell.CLOSE_WAIT.max; {ctx}");
    // Both ends of each connection were ESTABLISHED for about the client's hold.
    let est = hist(&s, "/dwell/ESTABLISHED");
    assert_eq!(
        est.count, 6,
        "dwell.ESTABLISHED.count (3 clients + 3 servers); {ctx}"
    );
    let lo_min = est_bounds.iter().map(|b| b.0).fold(f64::MAX, f64::min);
    let hi_min = est_bounds.iter().map(|b| b.1).fold(f64::MAX, f64::min);
    let lo_max = est_bounds.iter().map(|b| b.0).fold(0.0, f64::max);
    let hi_max = est_bounds.iter().map(|b| b.1).fold(0.0, f64::max);
    assert_between_us(
        "dwell.ESTABLISHED.min",
        est.min(),
        lo_min,
        hi_min,
        SLACK_US,
        &ctx,
    );
    assert_between_us(
        "dwell.ESTABLISHED.max",
        est.max(),
        lo_max,
        hi_max,
        SLACK_US,
        &ctx,
    );
}

/// What the test's clock saw of a passive handshake.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    connect_start: Instant,
    connect_end: Instant,
    accepted_at: Instant,
}

/// Inside the calling thread's namespace: a client connects to `a` and stays silent until the
/// server has accepted (so the only ACKs it sends before that are handshake ACKs), then closes.
fn accepted_connection(a: SocketAddr) -> Accepted {
    let listener = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
    let r = thread::scope(|s| {
        let l = &listener;
        let (tx, rx) = mpsc::channel::<Instant>();
        let server = thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn_scoped(s, move || {
                let (mut c, _) = accept_timeout(l, STEP_TIMEOUT);
                tx.send(Instant::now()).unwrap();
                c.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                let mut buf = Vec::new();
                c.read_to_end(&mut buf).expect("server read to EOF");
            })
            .unwrap();
        let client = thread::Builder::new()
            .name(CLIENT_THREAD.into())
            .spawn_scoped(s, move || {
                let connect_start = Instant::now();
                let c = TcpStream::connect_timeout(&a, STEP_TIMEOUT)
                    .unwrap_or_else(|e| panic!("connect {a}: {e}"));
                let connect_end = Instant::now();
                let accepted_at = rx
                    .recv_timeout(STEP_TIMEOUT)
                    .expect("server never accepted");
                drop(c);
                Accepted {
                    connect_start,
                    connect_end,
                    accepted_at,
                }
            })
            .unwrap();
        let r = join(client);
        join(server);
        r
    });
    drop(listener);
    r
}

#[test]
fn passive_handshake_includes_synack_retransmits() {
    // `auto`: sock_ops when streaming, srtt when aggregating in the kernel.
    passive_handshakes_with_one_synack_retransmit("auto", ["sock_ops", "srtt"], &[]);
}

/// `--passive-method srtt`, what `auto` uses in the kernel (and when streaming where sock_ops
/// cannot attach): the same handshakes, timed from what the kernel notes in the accepted socket
/// (the first SYN-ACK's round trip, or the time since it when it had to be retransmitted).
/// Without TCP timestamps, where the kernel has no round trip at all for a retransmitted SYN-ACK
/// (srtt_us stays 0).
#[test]
fn srtt_fallback_includes_synack_retransmits() {
    passive_handshakes_with_one_synack_retransmit(
        "srtt",
        ["srtt", "srtt"],
        &[("net.ipv4.tcp_timestamps", "0")],
    );
}

/// One quick handshake and one whose final ACK is dropped once (a ~1 s SYN-ACK retransmit),
/// measured with `--passive-method method` by a streaming tracer and an in-kernel one, in a
/// namespace with `sysctls` set; `shown` is the method the summaries must name (streaming, in
/// the kernel).
fn passive_handshakes_with_one_synack_retransmit(
    method: &str,
    shown: [&str; 2],
    sysctls: &[(&str, &str)],
) {
    const SLOW: u16 = 22301; // the client's final handshake ACK is dropped once
    const FAST: u16 = 22302; // nothing dropped
    let ns = Netns::new();
    for (k, v) in sysctls {
        sysctl_set(&ns, k, v);
    }
    drop_first(&ns, SLOW, "syn|ack|fin|rst|psh", "ack");
    let dir = TempDir::new("passive");
    let sum = dir.arg("summary.json");
    let ksum = dir.arg("kernel.json");
    let before = Counters::read(&ns);
    let tracer = Tracer::events(&[
        "--netns",
        ns.path_str(),
        "--json-summary",
        &sum,
        "--passive-method",
        method,
    ]);
    // The same handshakes measured in the kernel.
    let kernel = Tracer::watch(
        &ns,
        &ksum,
        &["--aggregate", "kernel", "--passive-method", method],
    );
    let (fast, slow) = ns.run(|| {
        let fast = accepted_connection(addr(FAST));
        let slow = accepted_connection(addr(SLOW));
        (fast, slow)
    });
    let out = tracer.stop();
    let kout = kernel.stop();
    let after = Counters::read(&ns);
    out.assert_clean();
    assert_clean_watch(&kout);
    let s = read_summary(&dir.file("summary.json"));
    let k = read_summary(&dir.file("kernel.json"));
    let ctx = format!(
        "summary:\n{s:#}\nfast: {fast:?}\nslow: {slow:?}\nevents:\n{}",
        describe_all(&out.events)
    );

    // Ground truth: the slow client was connected at once, its server only ~1 s later, after
    // one SYN-ACK retransmit.
    assert!(
        slow.connect_end - slow.connect_start < Duration::from_millis(500),
        "connect() took {:?}; {ctx}",
        slow.connect_end - slow.connect_start
    );
    assert!(
        us(slow.accepted_at - slow.connect_end) >= RTO_MIN_US as f64,
        "accept() returned {:?} after connect(): the final ACK was not dropped?",
        slow.accepted_at - slow.connect_end
    );
    assert_eq!(
        before.delta(&after, "Tcp.RetransSegs"),
        1,
        "kernel's retransmit count in the namespace"
    );

    // sock_ops is available here (cgroup v2): streaming, `auto` does not fall back to srtt.
    for (run, shown) in [(&s, shown[0]), (&k, shown[1])] {
        assert_eq!(
            run["handshake"]["passive_method"],
            Value::from(shown),
            "handshake.passive_method; {ctx}\nkernel-mode summary:\n{k:#}"
        );
    }
    if method == "auto" {
        assert!(
            !out.stderr.contains("measured by srtt"),
            "the tracer fell back to srtt:\n{}",
            out.stderr
        );
    }
    assert_eq!(
        int(&s, "/retransmits/synack"),
        1,
        "retransmits.synack; {ctx}"
    );
    assert_eq!(int(&s, "/retransmits/syn"), 0, "retransmits.syn; {ctx}");

    // From the SYN's arrival (inside connect()) to the accepted socket's ESTABLISHED (before
    // accept() returned).
    let slow_h = hist(&s, &format!("/by_port/{SLOW}/handshake_passive"));
    assert_eq!(
        slow_h.count, 1,
        "by_port.{SLOW}.handshake_passive.count; {ctx}"
    );
    assert!(
        slow_h.min() >= RTO_MIN_US,
        "by_port.{SLOW}.handshake_passive includes the ~1 s SYN-ACK retransmit; {ctx}"
    );
    // srtt times a retransmitted SYN-ACK's handshake by the kernel's total_rto_time: whole
    // milliseconds, the difference of two millisecond clocks, so up to 1 ms over (seen: 1012
    // ms for 1011.2 ms between connect() and accept()).
    let slack = if shown[0] == "srtt" { 1000.0 } else { 0.0 };
    assert_between_us(
        &format!("by_port.{SLOW}.handshake_passive"),
        slow_h.max(),
        us(slow.accepted_at - slow.connect_end) - 50_000.0,
        us(slow.accepted_at - slow.connect_start),
        slack,
        &ctx,
    );
    let fast_h = hist(&s, &format!("/by_port/{FAST}/handshake_passive"));
    assert_eq!(
        fast_h.count, 1,
        "by_port.{FAST}.handshake_passive.count; {ctx}"
    );
    assert!(
        fast_h.max() < 100_000,
        "a handshake with nothing dropped is quick; {ctx}"
    );
    assert!(
        fast_h.max() as f64
            <= us(fast.accepted_at - fast.connect_start)
                + hdr_tol_us(us(fast.accepted_at - fast.connect_start)),
        "by_port.{FAST}.handshake_passive is longer than connect() to accept(); {ctx}"
    );
    let passive = hist(&s, "/handshake/passive");
    assert_eq!(passive.count, 2, "handshake.passive.count; {ctx}");
    assert_eq!(passive.min(), fast_h.min(), "handshake.passive.min; {ctx}");
    assert_eq!(passive.max(), slow_h.max(), "handshake.passive.max; {ctx}");

    // The clients' side did not wait.
    let active = hist(&s, "/handshake/active");
    assert_eq!(active.count, 2, "handshake.active.count; {ctx}");
    assert!(active.max() < 500_000, "handshake.active.max; {ctx}");
    assert_eq!(
        s["handshake"]["active_by_syn_retransmits"],
        json!({ "0": 2 }),
        "handshake.active_by_syn_retransmits; {ctx}"
    );

    // In the kernel: the same split by SYN-ACK retransmits, and the slow handshake ~1 s long
    // (a bucket's midpoint, within 1/64).
    let kctx = format!("kernel-mode summary:\n{k:#}\n{ctx}");
    for run in [&s, &k] {
        assert_eq!(
            run["handshake"]["passive_by_synack_retransmits"],
            json!({ "0": 1, "1": 1 }),
            "handshake.passive_by_synack_retransmits; {kctx}"
        );
    }
    let kslow = hist(&k, &format!("/by_port/{SLOW}/handshake_passive"));
    assert_eq!(
        kslow.count, 1,
        "kernel by_port.{SLOW}.handshake_passive; {kctx}"
    );
    assert!(
        kslow.min() as f64 >= RTO_MIN_US as f64 * (1.0 - BUCKET),
        "kernel by_port.{SLOW}.handshake_passive includes the SYN-ACK retransmit; {kctx}"
    );
}

#[test]
fn filtered_out_handshakes_leave_nothing_pending() {
    const TRACED: u16 = 22701;
    const OTHER: u16 = 22702;
    let traced = Netns::new();
    let other = Netns::new();
    let dir = TempDir::new("pending");
    let sum = dir.arg("summary.json");
    let tracer = Tracer::events(&["--netns", traced.path_str(), "--json-summary", &sum]);
    for _ in 0..3 {
        tcptrace_tests::scenario::exchange(&other, addr(OTHER), Duration::from_millis(1));
    }
    tcptrace_tests::scenario::exchange(&traced, addr(TRACED), Duration::from_millis(1));
    let out = tracer.stop();
    out.assert_clean();
    let s = read_summary(&dir.file("summary.json"));
    let ctx = format!("summary:\n{s:#}");
    assert_eq!(hist(&s, "/handshake/passive").count, 1, "{ctx}");
    assert_eq!(
        s["by_port"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec![TRACED.to_string()]),
        "by_port; {ctx}"
    );
    // Every handshake in the traced namespace completed; SYNs seen in other namespaces (three
    // of ours, and whatever else the host did) are not this run's business and must not be
    // left waiting for an accepted socket the filter will never let through.
    assert_eq!(
        int(&s, "/sockets/pending_syns"),
        0,
        "sockets.pending_syns; {ctx}"
    );
    assert_eq!(
        int(&s, "/sockets/pending_syns_evicted"),
        0,
        "sockets.pending_syns_evicted; {ctx}"
    );
}
