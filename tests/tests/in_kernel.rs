//! In-kernel aggregation (`--aggregate kernel`, what `watch` does by default): the kernel times
//! state changes itself and userspace folds its log-linear histograms (bucket midpoints, within
//! 1/64 of the true value). Checked against a streaming tracer (`--aggregate user`, exact values)
//! running at the same time on the same connections, against the test's own clock and the
//! kernel's counters, and for the filters, leak ages, errors and the choice `auto` makes.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tcptrace_tests::diag::{
    array, listen_with_backlog, listener as listener_of, own_comm, settle, ss, ss_listener,
};
use tcptrace_tests::outputs::{
    BUCKET, H, TempDir, assert_between_us, assert_clean_watch, drop_first, hdr_tol_us, hist, int,
    object_keys, read_summary, run_tracer, show, summary_tags, watch_stdout,
};
use tcptrace_tests::scenario::{
    Held, STEP_TIMEOUT, accept_timeout, exchange, held_connection, join, us,
};
use tcptrace_tests::tracer::SETTLE;
use tcptrace_tests::{Counters, Netns, Tracer, nft};

/// The initial retransmission timeout is 1 s; a timer may fire a few jiffies early.
const RTO_MIN_US: f64 = 995_000.0;
/// How far the test's clock around a syscall may be from the kernel's timestamps inside it.
const SLACK_US: f64 = 5_000.0;
/// Two tracers on one tracepoint run their programs one after the other, so the second reads
/// the clock after the first has finished: a few µs later, tens of µs when the first creates a
/// map entry (a per-port histogram row, a socket's times). Measured: up to 40 µs.
const PAIR_JITTER_US: f64 = 100.0;
/// Let the tracer take its first sock_diag snapshot before making what it must see appear.
const FIRST_SNAPSHOT: Duration = Duration::from_millis(300);
/// Tracers that should fail at once get this long.
const LIMIT: Duration = Duration::from_secs(30);

/// Tests of this file run two at a time; one that needs the sockets it makes to get consecutive
/// cookies (handed out per CPU) runs alone: another test's sockets taking cookies on its CPU
/// would break the run.
static ONE_CPU: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn alongside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    ONE_CPU.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    ONE_CPU.write().unwrap_or_else(|e| e.into_inner())
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Inside the calling thread's namespace: a client connects to `a` and `l` accepts it. Returns
/// (client, accepted stream, client address).
fn connect_pair(l: &TcpListener, a: SocketAddr) -> (TcpStream, TcpStream, SocketAddr) {
    let c =
        TcpStream::connect_timeout(&a, STEP_TIMEOUT).unwrap_or_else(|e| panic!("connect {a}: {e}"));
    let (srv, peer) = accept_timeout(l, STEP_TIMEOUT);
    assert_eq!(peer, c.local_addr().unwrap());
    (c, srv, peer)
}

/// The JSON pointer of a tag of [`summary_tags`] (`port.P.dwell.S` -> `/by_port/P/dwell/S`).
fn tag_ptr(tag: &str) -> String {
    let t = match tag.strip_prefix("port.") {
        Some(rest) => format!("by_port.{rest}"),
        None => tag.to_string(),
    };
    format!("/{}", t.replace('.', "/"))
}

/// Every histogram of `s` by tag (those of [`summary_tags`] plus
/// `handshake.active_by_remote_port.P`), non-empty ones only.
fn all_hists(s: &Value) -> BTreeMap<String, H> {
    let mut m: BTreeMap<String, H> = summary_tags(s)
        .into_keys()
        .map(|t| {
            let h = hist(s, &tag_ptr(&t));
            (t, h)
        })
        .collect();
    let by_rport = s
        .pointer("/handshake/active_by_remote_port")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no handshake.active_by_remote_port object:\n{s:#}"));
    for p in by_rport.keys() {
        let h = hist(s, &format!("/handshake/active_by_remote_port/{p}"));
        if h.count > 0 {
            m.insert(format!("handshake.active_by_remote_port.{p}"), h);
        }
    }
    m
}

/// The counts of [`all_hists`].
fn hist_counts(s: &Value) -> BTreeMap<String, u64> {
    all_hists(s)
        .into_iter()
        .map(|(t, h)| (t, h.count))
        .collect()
}

/// A folded value (a bucket midpoint, through HdrHistogram) against the streamed exact one
/// (through HdrHistogram): within 1/64, both HdrHistogram roundings, and [`PAIR_JITTER_US`].
/// Returns what is wrong, if anything.
fn folded_near(what: &str, kernel: u64, exact: u64) -> Option<String> {
    let e = exact as f64;
    let tol = e * BUCKET + 2.0 * hdr_tol_us(e) + PAIR_JITTER_US;
    ((kernel as f64 - e).abs() > tol).then(|| {
        format!(
            "{what}: {kernel} µs in kernel mode vs. {exact} µs streamed (want within {tol:.0} µs)"
        )
    })
}

/// `--aggregate kernel` against `--aggregate user`, both tracing the same namespace at once:
/// seven connections on seven listening ports, held in ESTABLISHED and CLOSE_WAIT for chosen
/// times; the first SYN of five of them is dropped (1 s handshakes). Each client closes only
/// after its server accepted: a FIN right behind the final ACK can make the kernel create and
/// discard a second child socket for the same request when the two are processed on two CPUs at
/// once (an extra LISTEN -> SYN_RECV -> CLOSE).
#[test]
fn kernel_and_user_aggregation_agree_side_by_side() {
    let _alone = alongside_others();
    // The pairs of values are compared once more, on new connections, if they differ: the host
    // can stop this VM's CPU between the two tracers' programs (steal time), which once made
    // the second one's clock read 118 µs later than the first's (in 8 other runs here no value
    // was more than 4 µs beyond a bucket's width). So are runs where the kernel left a state
    // change unreported (see `side_by_side`). An error of tcptrace's own shows up both times.
    let first = side_by_side();
    if first.is_empty() {
        return;
    }
    eprintln!(
        "values differed, once more on new connections:\n{}",
        first.join("\n")
    );
    let second = side_by_side();
    assert!(
        second.is_empty(),
        "values differed twice; first run:\n{}\nsecond run:\n{}",
        first.join("\n"),
        second.join("\n")
    );
}

/// One run of [`kernel_and_user_aggregation_agree_side_by_side`]: panics on anything wrong but
/// the folded values against the streamed ones and totals both runs agree on but fall short of,
/// which it returns (with both summaries).
fn side_by_side() -> Vec<String> {
    const N: usize = 5;
    // (port, ms the client holds ESTABLISHED, ms the server holds CLOSE_WAIT); the first SYN
    // to each of the first N ports is dropped.
    const CASES: [(u16, u64, u64); 7] = [
        (22410, 100, 400),
        (22411, 200, 300),
        (22412, 300, 200),
        (22413, 400, 100),
        (22414, 500, 50),
        (22415, 300, 600),
        (22416, 700, 200),
    ];
    const CONNS: usize = CASES.len();
    let ns = Netns::new();
    for &(p, ..) in &CASES[..N] {
        drop_first(&ns, p, "syn|ack", "syn");
    }
    let dir = TempDir::new("in-kernel-pair");
    let (ka, ua) = (dir.arg("kernel.json"), dir.arg("user.json"));
    let before = Counters::read(&ns);
    let kt = Tracer::watch(&ns, &ka, &["--aggregate", "kernel"]);
    // In-kernel aggregation times passive handshakes by srtt unless told otherwise; the
    // streaming run the same way, so both measure the same thing.
    let ut = Tracer::watch(
        &ns,
        &ua,
        &["--aggregate", "user", "--passive-method", "srtt"],
    );
    let held: Vec<Held> = ns.run(|| {
        thread::scope(|s| {
            let hs: Vec<_> = CASES
                .iter()
                .map(|&(p, est, cw)| {
                    s.spawn(move || {
                        held_connection(p, Duration::from_millis(est), Duration::from_millis(cw))
                    })
                })
                .collect();
            hs.into_iter().map(join).collect()
        })
    });
    settle(&ns);
    let kout = kt.stop();
    let uout = ut.stop();
    let after = Counters::read(&ns);
    let kc = assert_clean_watch(&kout);
    let uc = assert_clean_watch(&uout);
    let k = read_summary(&dir.file("kernel.json"));
    let u = read_summary(&dir.file("user.json"));
    let ctx =
        format!("kernel-mode summary:\n{k:#}\nuser-mode summary:\n{u:#}\nconnections: {held:#?}");
    let connect_us = |h: &Held| us(h.c1 - h.c0);

    // Ground truth: the first SYN of each slow connection was dropped and retransmitted after
    // ~1 s; the others were not slowed.
    for (i, h) in held.iter().enumerate() {
        let slow = i < N;
        assert_eq!(
            connect_us(h) >= RTO_MIN_US,
            slow,
            "connect() to {} took {:?}: want {} 1 s",
            h.port,
            h.c1 - h.c0,
            if slow { ">=" } else { "<" }
        );
    }
    assert_eq!(
        before.delta(&after, "Tcp.RetransSegs"),
        N as i64,
        "kernel's retransmit count in the namespace"
    );

    assert_eq!(
        k["aggregation"], "kernel",
        "kernel run's aggregation; {ctx}"
    );
    assert_eq!(u["aggregation"], "user", "user run's aggregation; {ctx}");
    assert!(u["in_kernel"].is_null(), "user run's in_kernel; {ctx}");

    // The same counts in both, and the expected ones.
    for ptr in [
        "/connections/active_opens",
        "/connections/passive_opens",
        "/connections/closed",
        "/retransmits/syn",
        "/retransmits/synack",
    ] {
        assert_eq!(int(&k, ptr), int(&u, ptr), "{ptr}: kernel vs. user; {ctx}");
    }
    // The kernel itself once in ~100 runs reports a client's ESTABLISHED -> FIN_WAIT1 and
    // nothing after it, though the socket ends in TIME_WAIT (an independent bpftrace script on
    // the same tracepoint saw the same; Linux 6.18): both tracers then agree on one close
    // fewer. That is not theirs to see, so such a run is retried like differing values.
    let short: Vec<String> = [
        ("/connections/active_opens", CONNS),
        ("/connections/passive_opens", CONNS),
        ("/connections/closed", 2 * CONNS),
        ("/retransmits/syn", N),
    ]
    .into_iter()
    .filter_map(|(ptr, want)| {
        let got = int(&k, ptr);
        (got != want as u64).then(|| format!("{ptr}: {got} in both runs, want {want}"))
    })
    .collect();
    if !short.is_empty() {
        return [short, vec![ctx]].concat();
    }
    let by_retrans = json!({ "0": CONNS - N, "1": N });
    assert_eq!(
        k["handshake"]["active_by_syn_retransmits"], by_retrans,
        "kernel run's handshake.active_by_syn_retransmits; {ctx}"
    );
    assert_eq!(
        u["handshake"]["active_by_syn_retransmits"], by_retrans,
        "user run's handshake.active_by_syn_retransmits; {ctx}"
    );
    let kh = all_hists(&k);
    let uh = all_hists(&u);
    assert_eq!(
        hist_counts(&k),
        hist_counts(&u),
        "histogram counts, kernel (left) vs. user (right); {ctx}"
    );
    // Client and server: CLOSE -> SYN_SENT -> ESTABLISHED -> FIN_WAIT1 -> FIN_WAIT2 -> CLOSE and
    // LISTEN -> SYN_RECV -> ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE; a listener (one per
    // connection here): CLOSE -> LISTEN -> CLOSE.
    let transitions = (10 * CONNS + 2 * CONNS) as u64;
    assert_eq!(
        k["in_kernel"],
        json!({
            "transitions": transitions, "unseen": 0, "sockets_untracked": 0, "sockets_evicted": 0,
            "ports_full": 0,
            "syns_evicted": 0, "passive_unmatched": 0,
        }),
        "in_kernel ({CONNS} connections and listeners); {ctx}"
    );
    assert_eq!(kc.in_kernel, Some(transitions), "kernel run's closing line");
    assert_eq!(uc.in_kernel, None, "user run's closing line");
    for (tag, want) in [
        ("handshake.active", CONNS),
        ("handshake.passive", CONNS),
        ("lifetime", 2 * CONNS),
        ("dwell.SYN_SENT", CONNS),
        ("dwell.ESTABLISHED", 2 * CONNS),
        ("dwell.CLOSE_WAIT", CONNS),
        ("dwell.LAST_ACK", CONNS),
    ] {
        assert_eq!(
            kh.get(tag).map(|h| h.count),
            Some(want as u64),
            "{tag}.count; {ctx}"
        );
    }
    // Values: the kernel's bucket midpoints against the streamed exact values.
    let mut differ = Vec::new();
    for (tag, kv) in &kh {
        let uv = &uh[tag];
        for (what, k, u) in [
            ("min", kv.min(), uv.min()),
            ("p50", kv.p50(), uv.p50()),
            ("max", kv.max(), uv.max()),
        ] {
            differ.extend(folded_near(&format!("{tag}.{what}"), k, u));
        }
    }

    // Against the test's clock, connection by connection: the kernel's active handshake lies
    // inside the client's connect() (at most a scheduling delay shorter), and the server's
    // ESTABLISHED and CLOSE_WAIT dwells within the bounds its threads saw; all within 1/64.
    let near = 50_000.0;
    for (i, h) in held.iter().enumerate() {
        let p = h.port;
        let tag = format!("handshake.active_by_remote_port.{p}");
        let v = kh[&tag];
        assert_eq!(v.count, 1, "{tag}.count; {ctx}");
        let ct = connect_us(h);
        if i < N {
            assert!(
                v.max() as f64 >= RTO_MIN_US * (1.0 - BUCKET),
                "{tag}: {} µs, want >= 1 s (less 1/64); {ctx}",
                v.max()
            );
        }
        assert_between_us(&tag, v.max(), ct - near, ct, ct * BUCKET, &ctx);
        for (state, (lo, hi)) in [
            ("ESTABLISHED", h.established()),
            ("CLOSE_WAIT", h.close_wait()),
        ] {
            let tag = format!("port.{p}.dwell.{state}");
            let v = kh
                .get(&tag)
                .unwrap_or_else(|| panic!("no {tag} in the kernel run; {ctx}"));
            assert_eq!(v.count, 1, "{tag}.count; {ctx}");
            assert_between_us(&tag, v.max(), lo, hi, SLACK_US + hi * BUCKET, &ctx);
        }
    }
    if !differ.is_empty() {
        differ.push(ctx);
    }
    differ
}

/// `-p PORT` is applied in the kernel: connections to another port of the same namespace are
/// neither counted nor timed, and those to PORT completely (as a streaming tracer with the same
/// filter, running at the same time, sees them).
#[test]
fn kernel_port_filter_keeps_only_that_port() {
    let _alone = alongside_others();
    const M: usize = 3;
    const KEPT: u16 = 22420;
    const OTHER: u16 = 22421;
    let ns = Netns::new();
    let dir = TempDir::new("in-kernel-port");
    let (ka, ua) = (dir.arg("kernel.json"), dir.arg("user.json"));
    let kept = KEPT.to_string();
    let kt = Tracer::watch(&ns, &ka, &["--aggregate", "kernel", "-p", &kept]);
    let ut = Tracer::watch(&ns, &ua, &["--aggregate", "user", "-p", &kept]);
    // On each port, one listener and M connections, accepted before the clients close (see
    // kernel_and_user_aggregation_agree_side_by_side); each server reads EOF and closes.
    ns.run(|| {
        for port in [KEPT, OTHER] {
            let l = TcpListener::bind(addr(port)).unwrap_or_else(|e| panic!("bind {port}: {e}"));
            let pairs: Vec<_> = (0..M).map(|_| connect_pair(&l, addr(port))).collect();
            for (c, mut srv, _) in pairs {
                drop(c);
                srv.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                let mut buf = Vec::new();
                srv.read_to_end(&mut buf).expect("server read to EOF");
            }
        }
    });
    let kout = kt.stop();
    let uout = ut.stop();
    let kc = assert_clean_watch(&kout);
    assert_clean_watch(&uout);
    let k = read_summary(&dir.file("kernel.json"));
    let u = read_summary(&dir.file("user.json"));
    let ctx = format!("kernel-mode summary:\n{k:#}\nuser-mode summary:\n{u:#}");

    assert_eq!(k["aggregation"], "kernel", "aggregation; {ctx}");
    assert_eq!(
        hist_counts(&k),
        hist_counts(&u),
        "histogram counts, kernel (left) vs. user (right), both with -p {KEPT}; {ctx}"
    );
    for ptr in [
        "/connections/active_opens",
        "/connections/passive_opens",
        "/connections/closed",
    ] {
        assert_eq!(int(&k, ptr), int(&u, ptr), "{ptr}; {ctx}");
    }
    let transitions = (10 * M + 2) as u64;
    assert_eq!(
        int(&k, "/in_kernel/transitions"),
        transitions,
        "in_kernel.transitions: {M} connections and a listener on {KEPT} only; {ctx}"
    );
    assert_eq!(int(&k, "/in_kernel/unseen"), 0, "in_kernel.unseen; {ctx}");
    assert_eq!(
        kc.in_kernel,
        Some(transitions),
        "closing line:\n{}",
        kout.stderr
    );
    assert_eq!(int(&k, "/connections/active_opens"), M as u64, "{ctx}");
    assert_eq!(int(&k, "/connections/passive_opens"), M as u64, "{ctx}");
    assert_eq!(int(&k, "/connections/closed"), 2 * M as u64, "{ctx}");
    for (ptr, want) in [
        ("/handshake/active", M),
        ("/handshake/passive", M),
        ("/dwell/ESTABLISHED", 2 * M),
        ("/dwell/LAST_ACK", M),
        ("/lifetime", 2 * M),
    ] {
        assert_eq!(hist(&k, ptr).count, want as u64, "{ptr}.count; {ctx}");
    }
    let keys = |ptr: &str| object_keys(&k, ptr, &ctx);
    assert_eq!(keys("/by_port"), [kept.as_str()], "by_port; {ctx}");
    assert_eq!(
        keys("/handshake/active_by_remote_port"),
        [kept.as_str()],
        "handshake.active_by_remote_port; {ctx}"
    );
}

/// More ports than `--max-ports`: the first ports measured get their rows in the kernel, the
/// others' measurements are counted in `in_kernel.ports_full` (seven per connection: the accept
/// queue as the handshake completes, the passive handshake, four dwells of the accepted socket,
/// the active handshake by remote port), and the totals stay whole.
#[test]
fn ports_beyond_max_ports_are_counted_not_lost() {
    let _alone = alongside_others();
    const PORTS: [u16; 4] = [22501, 22502, 22503, 22504];
    let ns = Netns::new();
    let dir = TempDir::new("in-kernel-ports-full");
    let sp = dir.arg("s.json");
    let t = Tracer::watch(&ns, &sp, &["--aggregate", "kernel", "--max-ports", "2"]);
    // One after the other: the first two ports take the two blocks.
    ns.run(|| {
        for p in PORTS {
            held_connection(p, Duration::from_millis(10), Duration::from_millis(10));
        }
    });
    settle(&ns);
    let out = t.stop();
    assert_clean_watch(&out);
    let k = read_summary(&dir.file("s.json"));
    let ctx = format!("summary:\n{k:#}");
    let keys = |ptr: &str| object_keys(&k, ptr, &ctx);
    assert_eq!(keys("/by_port"), ["22501", "22502"], "by_port; {ctx}");
    assert_eq!(
        keys("/handshake/active_by_remote_port"),
        ["22501", "22502"],
        "handshake.active_by_remote_port; {ctx}"
    );
    assert_eq!(int(&k, "/in_kernel/ports_full"), 2 * 7, "{ctx}");
    assert_eq!(int(&k, "/in_kernel/transitions"), 4 * 12, "{ctx}");
    assert_eq!(hist(&k, "/handshake/passive").count, 4, "{ctx}");
    assert_eq!(hist(&k, "/handshake/active").count, 4, "{ctx}");
    for state in ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"] {
        let total = hist(&k, &format!("/dwell/{state}")).count;
        assert_eq!(
            total,
            if state == "ESTABLISHED" { 8 } else { 4 },
            "{state}; {ctx}"
        );
        for p in ["22501", "22502"] {
            assert_eq!(
                hist(&k, &format!("/by_port/{p}/dwell/{state}")).count,
                1,
                "port {p} {state}; {ctx}"
            );
        }
    }
}

/// Without sock_ops (in-kernel aggregation's default, `--passive-method srtt`), the accept queue
/// is sampled as each handshake completes, from the child the kernel has just copied from its
/// listener: clients that are never accepted, one after another, find 0, 1, 2, ... connections
/// waiting, and `ss` shows the queue they leave.
#[test]
fn accept_queue_is_sampled_as_handshakes_complete() {
    let _alone = alongside_others();
    const PORT: u16 = 22521;
    const CLIENTS: u64 = 5;
    let ns = Netns::new();
    let dir = TempDir::new("in-kernel-accept-queue");
    let sp = dir.arg("s.json");
    let t = Tracer::watch(&ns, &sp, &["--aggregate", "kernel"]);
    let (listener, clients) = ns.run(|| {
        let l = listen_with_backlog(addr(PORT), 16);
        let clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| {
                let c = TcpStream::connect_timeout(&addr(PORT), STEP_TIMEOUT).expect("connect");
                // The final ACK is processed in softirq, maybe after connect() returned.
                thread::sleep(Duration::from_millis(50));
                c
            })
            .collect();
        (l, clients)
    });
    let queued = ss_listener(&ns, PORT).recv_q;
    let out = t.stop();
    drop((clients, listener));
    assert_clean_watch(&out);
    let k = read_summary(&dir.file("s.json"));
    let ctx = format!("summary:\n{k:#}");
    assert_eq!(queued, CLIENTS, "ss: the accept queue the clients left");
    assert_eq!(k["handshake"]["passive_method"], "srtt", "{ctx}");
    let l = listener_of(&k, ns.inode(), PORT);
    assert_eq!(
        l["accept_queue_at_syn"],
        json!({"samples": CLIENTS, "p50": CLIENTS / 2, "p99": CLIENTS - 1, "max": CLIENTS - 1}),
        "accept_queue_at_syn: 0 to {} waiting as each handshake completed; {ctx}",
        CLIENTS - 1
    );
    assert_eq!(
        l["syn_queue_at_syn"]["samples"], 0,
        "no SYN queue samples without sock_ops; {ctx}"
    );
}

/// The kernel forgets a socket when it closes, listeners included: with room for 8 sockets,
/// ten listeners opened and closed one after the other, then one connection (3 sockets at
/// most at any time) are all measured.
#[test]
fn closed_listeners_free_their_kernel_table_entries() {
    let _alone = alongside_others();
    const LISTENERS: usize = 10;
    const CHURN: u16 = 22460;
    const PORT: u16 = 22461;
    let ns = Netns::new();
    let dir = TempDir::new("in-kernel-table");
    let sum = dir.arg("summary.json");
    let tracer = Tracer::watch(&ns, &sum, &["--aggregate", "kernel", "--max-sockets", "8"]);
    ns.run(|| {
        for _ in 0..LISTENERS {
            let l = TcpListener::bind(addr(CHURN)).unwrap_or_else(|e| panic!("bind: {e}"));
            drop(l);
        }
    });
    exchange(&ns, addr(PORT), Duration::from_millis(20));
    let out = tracer.stop();
    let c = assert_clean_watch(&out);
    let s = read_summary(&dir.file("summary.json"));
    let ctx = format!("summary:\n{s:#}");
    let transitions = (2 * LISTENERS + 12) as u64;
    assert_eq!(
        s["in_kernel"],
        json!({
            "transitions": transitions, "unseen": 0, "sockets_untracked": 0, "sockets_evicted": 0,
            "ports_full": 0,
            "syns_evicted": 0, "passive_unmatched": 0,
        }),
        "in_kernel ({LISTENERS} listeners opened and closed, then one connection; never more \
         than 3 sockets at once, room for 8); {ctx}"
    );
    assert_eq!(
        c.in_kernel,
        Some(transitions),
        "closing line:\n{}",
        out.stderr
    );
    assert_eq!(hist(&s, "/handshake/active").count, 1, "{ctx}");
    assert_eq!(hist(&s, "/lifetime").count, 2, "{ctx}");
}

/// With every slot a new socket may use taken, it gets the one of the oldest FIN_WAIT1 socket
/// among them (counted in `sockets_evicted`), never a CLOSE_WAIT one: the tracepoint now and
/// then leaves a socket in FIN_WAIT1 for good, whose slot would otherwise stay taken.
/// Room for 8 sockets: two listeners and three connections whose server -> client packets
/// nftables drops once established, so each client stays in FIN_WAIT1 after closing and each
/// server socket in CLOSE_WAIT; then connections to the other listener.
#[test]
fn full_socket_table_gives_fin_wait1_slots_to_new_sockets() {
    let _alone = alone();
    const STUCK: u16 = 22470;
    const FRESH: u16 = 22471;
    const HELD: usize = 3;
    const NEW: usize = 10;
    let ns = Netns::new();
    let dir = TempDir::new("in-kernel-evict");
    let sum = dir.arg("summary.json");
    let tracer = Tracer::watch(
        &ns,
        &sum,
        &[
            "--aggregate",
            "kernel",
            "--max-sockets",
            "8",
            "--close-wait-threshold",
            "1s",
            "--poll-interval",
            "500ms",
        ],
    );
    thread::sleep(FIRST_SNAPSHOT);
    let (listeners, pairs) = ns.run(|| {
        on_cpu0();
        let stuck = TcpListener::bind(addr(STUCK)).unwrap_or_else(|e| panic!("bind: {e}"));
        let fresh = TcpListener::bind(addr(FRESH)).unwrap_or_else(|e| panic!("bind: {e}"));
        let pairs: Vec<_> = (0..HELD).map(|_| connect_pair(&stuck, addr(STUCK))).collect();
        ((stuck, fresh), pairs)
    });
    nft(
        &ns,
        &format!(
            "table inet tcptrace_test_{STUCK} {{
  chain out {{
    type filter hook output priority 0; policy accept;
    tcp sport {STUCK} drop
  }}
}}
"
        ),
    );
    // The clients' FINs arrive, the servers' ACKs do not.
    let servers: Vec<TcpStream> = pairs.into_iter().map(|(_, srv, _)| srv).collect();
    thread::sleep(Duration::from_millis(100));
    let ss_mid = ss(&ns);
    ns.run(|| {
        on_cpu0();
        for _ in 0..NEW {
            let (c, srv, _) = connect_pair(&listeners.1, addr(FRESH));
            drop(c);
            drop(srv);
        }
    });
    // Past the 1 s CLOSE_WAIT threshold, plus polls.
    thread::sleep(Duration::from_millis(2500));
    let out = tracer.stop();
    drop(servers);
    drop(listeners);
    assert_clean_watch(&out);
    let s = read_summary(&dir.file("summary.json"));
    let ctx = format!("summary:\n{s:#}\nss before the new connections: {ss_mid:?}");
    let in_state = |st: &str| ss_mid.iter().filter(|s| s.state == st).count();
    assert_eq!(
        (in_state("FIN-WAIT-1"), in_state("CLOSE-WAIT")),
        (HELD, HELD),
        "the held connections' states (FIN-WAIT-1, CLOSE-WAIT) by ss; {ctx}"
    );
    // The held FIN_WAIT1 sockets gave their slots up (all 3 in every run alone; new clients
    // caught in FIN_WAIT1 when a slot is wanted may give theirs up too).
    let evicted = int(&s, "/in_kernel/sockets_evicted");
    assert!(
        evicted >= 1,
        "sockets_evicted {evicted}: the table was full of listeners, CLOSE_WAIT and FIN_WAIT1 \
         sockets; {ctx}"
    );
    let view = watch_stdout(&out);
    assert!(
        view.iter()
            .any(|l| l.starts_with("WARNING: in kernel:") && l.contains(&format!(" {evicted} evicted,"))),
        "the live view's warning about the kernel's tables, with {evicted} evicted:\n{}",
        view.join("\n")
    );
    // Every CLOSE_WAIT socket kept its slot: its leak age is exact, from the kernel's table.
    let leaks = array(&s, "close_wait_leaks");
    assert_eq!(leaks.len(), HELD, "CLOSE_WAIT leaks; {ctx}");
    for l in leaks {
        assert_eq!(
            l["age_is_lower_bound"].as_bool(),
            Some(false),
            "a CLOSE_WAIT socket lost its slot: {l}; {ctx}"
        );
    }
    // New sockets were measured from birth to close, in slots FIN_WAIT1 sockets gave up or the
    // new connections before them freed (all 20 in every run; without the eviction, none:
    // their 80 changes untracked).
    let lifetimes = hist(&s, "/lifetime").count;
    assert!(
        (NEW as u64..=2 * NEW as u64).contains(&lifetimes),
        "lifetimes measured {lifetimes} of {} new sockets; {ctx}",
        2 * NEW
    );
}

/// Pins the calling thread to CPU 0, so the sockets it makes get consecutive cookies (the kernel
/// hands them out in per-CPU batches) and so consecutive slots in the kernel's socket table.
fn on_cpu0() {
    // SAFETY: a zeroed cpu_set_t with CPU 0 set, for this thread only.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(r, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
}

/// What a leaked server socket's client sends and the server never reads.
const UNREAD: &[u8] = b"leak!";

/// CLOSE_WAIT leak ages in kernel mode come from the kernel's table of socket times (found by
/// socket cookie), so a leak that began while tracing has its exact age, also when its
/// connection was made before the tracer started.
#[test]
fn kernel_mode_close_wait_leaks_have_exact_ages() {
    let _alone = alongside_others();
    const PORT: u16 = 22430;
    const K: usize = 3; // leaked; the first one connected before tracing
    const M: usize = 2; // closed properly by the server
    let ns = Netns::new();
    let dir = TempDir::new("in-kernel-leak");
    let sum = dir.arg("summary.json");
    let a = addr(PORT);
    let (listener, early) = ns.run(|| {
        let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
        let p = connect_pair(&l, a);
        (l, p)
    });
    let tracer = Tracer::watch(
        &ns,
        &sum,
        &[
            "--aggregate",
            "kernel",
            "--close-wait-threshold",
            "2s",
            "--poll-interval",
            "500ms",
        ],
    );
    thread::sleep(FIRST_SNAPSHOT);
    let (leaked, leaked_peers, closed_peers, close_start, close_end) = ns.run(|| {
        let mut pairs = vec![early];
        pairs.extend((1..K + M).map(|_| connect_pair(&listener, a)));
        let t0 = Instant::now();
        let (mut leaked, mut leaked_peers, mut closing) = (Vec::new(), BTreeSet::new(), Vec::new());
        for (i, (mut c, srv, peer)) in pairs.into_iter().enumerate() {
            if i < K {
                c.write_all(UNREAD).expect("client write");
                leaked.push(srv);
                leaked_peers.insert(peer);
            } else {
                closing.push((srv, peer));
            }
            drop(c);
        }
        let t1 = Instant::now();
        let mut closed_peers = BTreeSet::new();
        for (mut srv, peer) in closing {
            srv.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
            let mut buf = Vec::new();
            srv.read_to_end(&mut buf).expect("server read to EOF");
            closed_peers.insert(peer);
        }
        (leaked, leaked_peers, closed_peers, t0, t1)
    });
    // Past the 2 s threshold, plus polls.
    thread::sleep((close_end + Duration::from_secs(4)).saturating_duration_since(Instant::now()));
    let stop_at = Instant::now();
    let out = tracer.stop();
    drop(leaked);
    drop(listener);
    assert_clean_watch(&out);
    let s = read_summary(&dir.file("summary.json"));
    let ctx = format!(
        "summary:\n{s:#}\nleaked client ends {leaked_peers:?} (the first connected before tracing), properly closed {closed_peers:?}"
    );

    assert_eq!(s["aggregation"], "kernel", "aggregation; {ctx}");
    let leaks = array(&s, "close_wait_leaks");
    let got: BTreeSet<SocketAddr> = leaks
        .iter()
        .map(|l| {
            assert_eq!(
                l["lport"].as_u64(),
                Some(PORT as u64),
                "leak lport: {l}; {ctx}"
            );
            format!(
                "{}:{}",
                l["raddr"].as_str().unwrap_or("?"),
                l["rport"].as_u64().unwrap_or(0)
            )
            .parse()
            .unwrap_or_else(|_| panic!("leak without a remote address: {l}; {ctx}"))
        })
        .collect();
    assert_eq!(leaks.len(), K, "number of leaks; {ctx}");
    assert_eq!(got, leaked_peers, "the leaked connections; {ctx}");
    // The summary's age is taken at exit: after the stop signal, before the exit.
    let lo = (stop_at + SETTLE - close_end).as_secs_f64() - 0.02;
    let hi = (out.exited - close_start).as_secs_f64() + 0.02;
    let comm = own_comm();
    for l in leaks {
        assert_eq!(
            l["age_is_lower_bound"].as_bool(),
            Some(false),
            "the socket entered CLOSE_WAIT while tracing: {l}; {ctx}"
        );
        let age = l["age_s"].as_f64().unwrap_or_else(|| panic!("age_s: {l}"));
        assert!(
            (lo..=hi).contains(&age),
            "leak age_s {age}, want within [{lo:.2}, {hi:.2}] (the test's clock around the \
             clients' closes and the tracer's exit): {l}; {ctx}"
        );
        assert_eq!(
            l["pid"].as_u64(),
            Some(std::process::id() as u64),
            "leak pid: {l}; {ctx}"
        );
        assert_eq!(
            l["comm"].as_str(),
            Some(comm.as_str()),
            "leak comm: {l}; {ctx}"
        );
        assert_eq!(
            l["recv_q"].as_u64(),
            Some(UNREAD.len() as u64),
            "leak recv_q (unread bytes): {l}; {ctx}"
        );
    }
}

/// `--aggregate kernel` with what needs every event in userspace: one error line, exit 1,
/// nothing attached, no file created or truncated.
#[test]
fn aggregate_kernel_refuses_what_needs_every_event() {
    let _alone = alongside_others();
    const OLD: &[u8] = b"an earlier recording";
    let dir = TempDir::new("in-kernel-errors");
    let rec = dir.arg("new.tcpt");
    let old = dir.arg("old.tcpt");
    std::fs::write(&old, OLD).unwrap();
    let mut nine = vec!["watch", "--aggregate", "kernel"];
    let ports: Vec<String> = (22440..22449).map(|p| p.to_string()).collect();
    for p in &ports {
        nine.extend_from_slice(&["-p", p]);
    }
    let cases: [(&[&str], &str); 5] = [
        (&["events", "--aggregate", "kernel"], "events"),
        (
            &["watch", "--aggregate", "kernel", "--record", &rec],
            "--record",
        ),
        (
            &["watch", "--aggregate", "kernel", "--record", &old],
            "--record",
        ),
        (&["watch", "--aggregate", "kernel", "--pid", "1"], "--pid"),
        (&nine, "8 --port"),
    ];
    for (args, why) in cases {
        // If it does not fail, it stops by itself (and the test fails below).
        let mut all = args.to_vec();
        all.extend_from_slice(&["--duration", "3s"]);
        let f = run_tracer(&all, LIMIT);
        let ctx = show(&format!("tcptrace {all:?}"), &f);
        assert_eq!(f.status.code(), Some(1), "want exit status 1; {ctx}");
        assert!(f.stdout.is_empty(), "want nothing on stdout; {ctx}");
        let lines: Vec<&str> = f.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("tcptrace: error: "),
            "want exactly one line on stderr, an error; {ctx}"
        );
        for want in ["--aggregate kernel", why] {
            assert!(
                lines[0].contains(want),
                "the error should name `{want}`; {ctx}"
            );
        }
    }
    let (names, kept) = (dir.names(), std::fs::read(&old).unwrap());
    assert!(
        names == ["old.tcpt"] && kept == OLD,
        "a refused --record must leave files alone: the directory holds {names:?} (want only \
         old.tcpt), old.tcpt holds {:?} (was {:?})",
        String::from_utf8_lossy(&kept),
        String::from_utf8_lossy(OLD)
    );
}

/// `auto` (the default): in-kernel aggregation for plain `watch`, streaming (with a note) when
/// `--record` needs every event. Both tracers see the same connection.
#[test]
fn auto_aggregation_streams_only_when_needed() {
    let _alone = alongside_others();
    const PORT: u16 = 22450;
    let ns = Netns::new();
    let dir = TempDir::new("in-kernel-auto");
    let (rs, ks) = (dir.arg("record.json"), dir.arg("plain.json"));
    let rec = dir.arg("run.tcpt");
    let rt = Tracer::watch(&ns, &rs, &["--record", &rec]);
    let kt = Tracer::watch(&ns, &ks, &[]);
    exchange(&ns, addr(PORT), Duration::from_millis(50));
    let rout = rt.stop();
    let kout = kt.stop();
    let rc = assert_clean_watch(&rout);
    let kc = assert_clean_watch(&kout);
    let r = read_summary(&dir.file("record.json"));
    let k = read_summary(&dir.file("plain.json"));
    let ctx = format!(
        "--record run:\n{r:#}\nstderr:\n{}\nplain run:\n{k:#}\nstderr:\n{}",
        rout.stderr, kout.stderr
    );

    let notes: Vec<&str> = rout
        .stderr
        .lines()
        .filter(|l| l.contains("streaming every event"))
        .collect();
    assert!(
        notes.len() == 1 && notes[0].contains("--record"),
        "the --record run should say once, naming --record, that it streams every event; {ctx}"
    );
    assert_eq!(
        r["aggregation"], "user",
        "--record run's aggregation; {ctx}"
    );
    assert!(r["in_kernel"].is_null(), "--record run's in_kernel; {ctx}");
    assert_eq!(rc.in_kernel, None, "--record run's closing line; {ctx}");
    let rec_len = std::fs::metadata(dir.file("run.tcpt")).map(|m| m.len());
    assert!(
        matches!(rec_len, Ok(n) if n > 0),
        "recording: {rec_len:?}; {ctx}"
    );

    assert!(
        !kout.stderr.contains("streaming every event"),
        "plain watch should not stream; {ctx}"
    );
    assert_eq!(k["aggregation"], "kernel", "plain run's aggregation; {ctx}");
    assert_eq!(
        int(&k, "/in_kernel/transitions"),
        12,
        "one connection, one listener; {ctx}"
    );
    assert_eq!(kc.in_kernel, Some(12), "plain run's closing line; {ctx}");

    for s in [&r, &k] {
        assert_eq!(int(s, "/connections/active_opens"), 1, "{ctx}");
        assert_eq!(int(s, "/connections/passive_opens"), 1, "{ctx}");
        assert_eq!(hist(s, "/handshake/active").count, 1, "{ctx}");
        assert_eq!(hist(s, "/dwell/ESTABLISHED").count, 2, "{ctx}");
    }
}
