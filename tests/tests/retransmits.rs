//! Retransmits made on purpose with nftables inside a private namespace: a dropped first SYN
//! (the client retransmits it) and a dropped final handshake ACK (the server retransmits its
//! SYN-ACK). The kernel's own Tcp.RetransSegs counter and the client's clock are the ground truth.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tcptrace_tests::events::{CLIENT_PATH, SERVER_PATH, socket_life, state_path, the_one};
use tcptrace_tests::scenario::{
    CLIENT_THREAD, Exchange, PAYLOAD, SERVER_THREAD, STEP_TIMEOUT, accept_timeout, exchange,
};
use tcptrace_tests::{Counters, EventExt, Netns, Tracer, describe_all, nft};

/// The initial retransmission timeout is 1 s; a timer may fire up to a few jiffies early.
const RTO_MIN_MS: f64 = 995.0;

/// Drop the first packet of each client connection to `port` whose flags (among syn, ack, fin,
/// rst, psh) are exactly `flags`: a dynamic set remembers client ports already dropped once.
fn drop_first(ns: &Netns, port: u16, mask: &str, flags: &str) {
    nft(
        ns,
        &format!(
            "table inet tcptrace_test {{
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

#[test]
fn dropped_first_syn_is_one_retransmit() {
    const PORT: u16 = 21201;
    let ns = Netns::new();
    drop_first(&ns, PORT, "syn|ack", "syn");
    let before = Counters::read(&ns);
    // The BTF tracepoint program and, beside it, the classic one (`--state-hook tracepoint`
    // hooks retransmits there too), on the same connection.
    let tracer = Tracer::events(&["--netns", ns.path_str()]);
    let classic = Tracer::events(&["--netns", ns.path_str(), "--state-hook", "tracepoint"]);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let ex = exchange(&ns, SocketAddr::new(ip, PORT), Duration::from_millis(50));
    let out = tracer.stop();
    let classic_out = classic.stop();
    let after = Counters::read(&ns);

    // Ground truth: the SYN was dropped once, so connect() waited for one retransmission.
    let connect_ms = ex.connect_time().as_secs_f64() * 1e3;
    assert!(
        connect_ms >= RTO_MIN_MS,
        "connect() took {connect_ms:.1} ms: the first SYN was not dropped?"
    );
    assert_eq!(
        before.delta(&after, "Tcp.RetransSegs"),
        1,
        "kernel counted retransmits in the namespace"
    );

    for (hook, out) in [("btf", &out), ("tracepoint", &classic_out)] {
        out.assert_clean();
        assert!(
            out.stderr.contains(if hook == "btf" {
                "retransmit_btf"
            } else {
                "tcp_retransmit,"
            }),
            "{hook} run did not attach its retransmit program:\n{}",
            out.stderr
        );
        syn_retransmit_seen(&out.events, &ns, &ex, ip, PORT, hook);
    }
}

/// The client's one SYN retransmit and its SYN_SENT dwell, as the `hook` run reported them.
fn syn_retransmit_seen(
    evs: &[Value],
    ns: &Netns,
    ex: &Exchange,
    ip: IpAddr,
    port: u16,
    hook: &str,
) {
    let connect_ms = ex.connect_time().as_secs_f64() * 1e3;
    let syn = the_one(evs, "the client's CLOSE->SYN_SENT", |e| {
        e.is_transition("CLOSE", "SYN_SENT") && e.rport() == Some(port as u64)
    });
    let client = socket_life(evs, syn);
    let ctx = format!(
        "{hook} run, client socket events:\n{}",
        describe_all(client.iter().copied())
    );
    let rtx = the_one(evs, "a retransmit", |e| e.kind() == "retransmit");
    assert_eq!(
        rtx.skaddr(),
        syn.skaddr(),
        "the retransmit is not on the client socket; {ctx}"
    );
    assert_eq!(
        rtx.str_of("state"),
        Some("SYN_SENT"),
        "retransmit state; {ctx}"
    );
    assert_eq!(rtx.raddr(), Some(ip), "retransmit raddr; {ctx}");
    assert_eq!(rtx.rport(), Some(port as u64), "retransmit rport; {ctx}");
    assert_eq!(
        rtx.lport(),
        Some(ex.client_local.port() as u64),
        "retransmit lport; {ctx}"
    );
    assert_eq!(rtx.netns(), Some(ns.inode()), "retransmit netns; {ctx}");
    assert!(
        evs.iter().all(|e| e.kind() != "retransmit_synack"),
        "no SYN-ACK was retransmitted:\n{}",
        describe_all(evs)
    );
    let rtx_after_ms = (rtx.ts_ns() as f64 - syn.ts_ns() as f64) / 1e6;
    assert!(
        (RTO_MIN_MS..=1500.0).contains(&rtx_after_ms),
        "the SYN retransmit came {rtx_after_ms:.1} ms after the first SYN, expected ~1000; {ctx}"
    );

    assert_eq!(state_path(&client), CLIENT_PATH, "client state path; {ctx}");
    let est = client
        .iter()
        .find(|e| e.is_transition("SYN_SENT", "ESTABLISHED"))
        .unwrap();
    let dwell = est
        .f64_of("dwell_ms")
        .unwrap_or_else(|| panic!("SYN_SENT->ESTABLISHED without dwell_ms; {ctx}"));
    assert!(
        dwell >= RTO_MIN_MS,
        "SYN_SENT dwell {dwell} ms, but a SYN was retransmitted after ~1 s; {ctx}"
    );
    assert!(
        dwell <= connect_ms + 1.0 && dwell >= connect_ms - 50.0,
        "SYN_SENT dwell {dwell:.3} ms vs. the client's connect() {connect_ms:.3} ms (want within 50 ms, not above); {ctx}"
    );
}

#[test]
fn dropped_final_ack_is_one_synack_retransmit() {
    const PORT: u16 = 21301;
    let ns = Netns::new();
    drop_first(&ns, PORT, "syn|ack|fin|rst|psh", "ack");
    let before = Counters::read(&ns);
    let tracer = Tracer::events(&["--netns", ns.path_str()]);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let addr = SocketAddr::new(ip, PORT);

    // The client connects and stays silent until the server has accepted: the only ACK it
    // sends before that is the (dropped) handshake ACK and its repetition.
    let (client_local, connect_time, connect_end, accepted_at) = ns.run(move || {
        let listener = TcpListener::bind(addr).unwrap();
        thread::scope(|s| {
            let l = &listener;
            let (tx, rx) = mpsc::channel::<Instant>();
            let server = thread::Builder::new()
                .name(SERVER_THREAD.into())
                .spawn_scoped(s, move || {
                    let (mut c, _) = accept_timeout(l, STEP_TIMEOUT);
                    tx.send(Instant::now()).unwrap();
                    c.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                    let mut buf = Vec::new();
                    c.read_to_end(&mut buf).expect("server read");
                    assert_eq!(buf, PAYLOAD);
                })
                .unwrap();
            let client = thread::Builder::new()
                .name(CLIENT_THREAD.into())
                .spawn_scoped(s, move || {
                    let t0 = Instant::now();
                    let mut c = TcpStream::connect_timeout(&addr, STEP_TIMEOUT).expect("connect");
                    let t1 = Instant::now();
                    let accepted_at = rx
                        .recv_timeout(STEP_TIMEOUT)
                        .expect("server never accepted");
                    c.write_all(PAYLOAD).unwrap();
                    let local = c.local_addr().unwrap();
                    drop(c);
                    (local, t1 - t0, t1, accepted_at)
                })
                .unwrap();
            let r = client
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            server
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            r
        })
    });
    let out = tracer.stop();
    let after = Counters::read(&ns);
    out.assert_clean();
    let evs: &[Value] = &out.events;

    // Ground truth: the client was connected at once; the server only got the connection
    // after its SYN-ACK was retransmitted (~1 s) and answered.
    assert!(
        connect_time < Duration::from_millis(500),
        "connect() took {connect_time:?}"
    );
    let wait_ms = (accepted_at - connect_end).as_secs_f64() * 1e3;
    assert!(
        wait_ms >= RTO_MIN_MS,
        "accept() returned {wait_ms:.1} ms after connect(): the final ACK was not dropped?"
    );
    assert_eq!(
        before.delta(&after, "Tcp.RetransSegs"),
        1,
        "kernel counted retransmits in the namespace"
    );

    let synack = the_one(evs, "a retransmit_synack", |e| {
        e.kind() == "retransmit_synack"
    });
    let ctx = format!(
        "retransmit_synack: {}\nall events:\n{}",
        tcptrace_tests::describe(synack),
        describe_all(evs)
    );
    assert_eq!(
        synack.lport(),
        Some(PORT as u64),
        "retransmit_synack lport; {ctx}"
    );
    assert_eq!(synack.laddr(), Some(ip), "retransmit_synack laddr; {ctx}");
    assert_eq!(
        synack.raddr(),
        Some(client_local.ip()),
        "retransmit_synack raddr; {ctx}"
    );
    assert_eq!(
        synack.rport(),
        Some(client_local.port() as u64),
        "retransmit_synack rport; {ctx}"
    );
    assert_eq!(
        synack.str_of("state"),
        Some("NEW_SYN_RECV"),
        "retransmit_synack state; {ctx}"
    );
    assert_eq!(
        synack.netns(),
        Some(ns.inode()),
        "retransmit_synack netns; {ctx}"
    );
    let listen = the_one(evs, "the listener's CLOSE->LISTEN", |e| {
        e.is_transition("CLOSE", "LISTEN") && e.lport() == Some(PORT as u64)
    });
    assert_eq!(
        synack.skaddr(),
        listen.skaddr(),
        "retransmit_synack skaddr must be the listener's; {ctx}"
    );
    assert!(
        evs.iter().all(|e| e.kind() != "retransmit"),
        "no data or SYN was retransmitted; {ctx}"
    );

    let syn = the_one(evs, "the client's CLOSE->SYN_SENT", |e| {
        e.is_transition("CLOSE", "SYN_SENT") && e.rport() == Some(PORT as u64)
    });
    let client = socket_life(evs, syn);
    assert_eq!(state_path(&client), CLIENT_PATH, "client state path; {ctx}");
    let client_est = client
        .iter()
        .find(|e| e.is_transition("SYN_SENT", "ESTABLISHED"))
        .unwrap();
    let child0 = the_one(evs, "the server child's LISTEN->SYN_RECV", |e| {
        e.is_transition("LISTEN", "SYN_RECV") && e.lport() == Some(PORT as u64)
    });
    let server = socket_life(evs, child0);
    assert_eq!(
        state_path(&server),
        SERVER_PATH,
        "server child state path; {ctx}"
    );
    let gap_ms = (child0.ts_ns() as f64 - client_est.ts_ns() as f64) / 1e6;
    assert!(
        (RTO_MIN_MS..=3000.0).contains(&gap_ms),
        "the server child appeared {gap_ms:.1} ms after the client was ESTABLISHED, expected ~1000; {ctx}"
    );
    assert!(
        client_est.ts_ns() < synack.ts_ns() && synack.ts_ns() <= child0.ts_ns(),
        "the SYN-ACK retransmit must come between the client's ESTABLISHED and the child's creation; {ctx}"
    );
}
