//! The state transitions of one ordinary connection, client closing first, as the tracer
//! reports them, checked against what the client and server did.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tcptrace_tests::events::{
    CLIENT_PATH, FIELDS, SERVER_PATH, is_core, socket_life, state_path, the_one,
};
use tcptrace_tests::scenario::{CLIENT_THREAD, SERVER_THREAD, exchange};
use tcptrace_tests::{EventExt, Netns, Tracer, TracerOutput, describe_all};

/// How long the client keeps the connection open after writing.
const HOLD: Duration = Duration::from_millis(200);
/// Slack between the tracer's dwell times and the client's own clock.
const CLOCK_SLACK_MS: f64 = 1.0;

fn check(ip: IpAddr, port: u16) {
    let ns = Netns::new();
    let tracer = Tracer::events(&["--netns", ns.path_str()]);
    let ex = exchange(&ns, SocketAddr::new(ip, port), HOLD);
    let out = tracer.stop();
    out.assert_clean();
    let evs: &[Value] = &out.events;
    let me = std::process::id() as u64;
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };

    for e in evs {
        if e.netns() != Some(ns.inode()) {
            out.fail(&format!(
                "event outside netns {} ({}) despite --netns:\n  {}",
                ns.inode(),
                ns.path_str(),
                tcptrace_tests::describe(e)
            ));
        }
        assert_eq!(
            e.str_of("family"),
            Some(family),
            "family of\n  {}",
            tcptrace_tests::describe(e)
        );
    }

    // --- the client socket ---
    let syn = the_one(evs, "the client's CLOSE->SYN_SENT", |e| {
        e.is_transition("CLOSE", "SYN_SENT") && e.rport() == Some(port as u64)
    });
    let client = socket_life(evs, syn);
    let ctx = format!(
        "client socket {} events:\n{}",
        syn.skaddr(),
        describe_all(client.iter().copied())
    );
    assert_eq!(state_path(&client), CLIENT_PATH, "client state path; {ctx}");
    assert!(
        client
            .iter()
            .filter(|e| is_core(e))
            .all(|e| e.kind() == "state"),
        "client had non-state events; {ctx}"
    );
    for (i, e) in client.iter().enumerate() {
        assert_eq!(e.raddr(), Some(ip), "client raddr; {ctx}");
        assert_eq!(e.rport(), Some(port as u64), "client rport; {ctx}");
        assert_eq!(e.laddr(), Some(ex.client_local.ip()), "client laddr; {ctx}");
        if i == 0 {
            let lp = e.lport().unwrap_or(u64::MAX);
            assert!(
                lp == 0 || lp == ex.client_local.port() as u64,
                "CLOSE->SYN_SENT lport must be 0 or the client's port; {ctx}"
            );
        } else {
            assert_eq!(
                e.lport(),
                Some(ex.client_local.port() as u64),
                "client lport; {ctx}"
            );
        }
        assert_eq!(
            e.u64_of("owner_pid"),
            Some(me),
            "client owner_pid (connect() ran in this process); {ctx}"
        );
    }
    // Who connected: this process, on the client thread.
    assert_eq!(syn.u64_of("pid"), Some(me), "CLOSE->SYN_SENT pid; {ctx}");
    assert_eq!(
        syn.u64_of("tid"),
        Some(ex.client_tid as u64),
        "CLOSE->SYN_SENT tid; {ctx}"
    );
    assert_eq!(
        syn.str_of("comm"),
        Some(CLIENT_THREAD),
        "CLOSE->SYN_SENT comm; {ctx}"
    );
    // ts_ns is CLOCK_MONOTONIC: the SYN_SENT transition happened inside connect().
    assert!(
        (ex.connect_start_ns..=ex.connect_end_ns).contains(&syn.ts_ns()),
        "CLOSE->SYN_SENT ts_ns {} outside the client's connect() [{}, {}] (CLOCK_MONOTONIC); {ctx}",
        syn.ts_ns(),
        ex.connect_start_ns,
        ex.connect_end_ns
    );
    // Time in SYN_SENT: within the client's connect().
    let est = *client
        .iter()
        .find(|e| e.is_transition("SYN_SENT", "ESTABLISHED"))
        .unwrap();
    let connect_ms = ex.connect_time().as_secs_f64() * 1e3;
    let dwell = est
        .f64_of("dwell_ms")
        .unwrap_or_else(|| panic!("SYN_SENT->ESTABLISHED has no dwell_ms; {ctx}"));
    assert!(
        dwell > 0.0 && dwell <= connect_ms + CLOCK_SLACK_MS,
        "SYN_SENT dwell {dwell} ms, but the client's connect() took {connect_ms:.3} ms; {ctx}"
    );
    // Time in ESTABLISHED: from inside connect() to inside close().
    let fin1 = *client
        .iter()
        .find(|e| e.is_transition("ESTABLISHED", "FIN_WAIT1"))
        .unwrap();
    let est_ms = fin1
        .f64_of("dwell_ms")
        .unwrap_or_else(|| panic!("ESTABLISHED->FIN_WAIT1 has no dwell_ms; {ctx}"));
    let lo = (ex.close_start - ex.connect_end).as_secs_f64() * 1e3 - CLOCK_SLACK_MS;
    let hi = (ex.close_end - ex.connect_start).as_secs_f64() * 1e3 + CLOCK_SLACK_MS;
    assert!(
        (lo..=hi).contains(&est_ms),
        "ESTABLISHED dwell {est_ms} ms outside what the client measured [{lo:.3}, {hi:.3}] ms; {ctx}"
    );
    // The client's close() ran on the client thread.
    assert_eq!(
        fin1.u64_of("tid"),
        Some(ex.client_tid as u64),
        "ESTABLISHED->FIN_WAIT1 tid; {ctx}"
    );

    // --- the server's child socket ---
    let child0 = the_one(evs, "the server child's LISTEN->SYN_RECV", |e| {
        e.is_transition("LISTEN", "SYN_RECV") && e.lport() == Some(port as u64)
    });
    let server = socket_life(evs, child0);
    let sctx = format!(
        "server child {} events:\n{}",
        child0.skaddr(),
        describe_all(server.iter().copied())
    );
    assert_eq!(
        state_path(&server),
        SERVER_PATH,
        "server child state path; {sctx}"
    );
    assert!(
        server
            .iter()
            .filter(|e| is_core(e))
            .all(|e| e.kind() == "state"),
        "server child had non-state events; {sctx}"
    );
    for e in &server {
        assert_eq!(e.laddr(), Some(ip), "server laddr; {sctx}");
        assert_eq!(e.lport(), Some(port as u64), "server lport; {sctx}");
        assert_eq!(e.raddr(), Some(ex.server_peer.ip()), "server raddr; {sctx}");
        assert_eq!(
            e.rport(),
            Some(ex.server_peer.port() as u64),
            "server rport (the client's port); {sctx}"
        );
    }
    let last_ack = *server
        .iter()
        .find(|e| e.is_transition("CLOSE_WAIT", "LAST_ACK"))
        .unwrap();
    assert_eq!(
        last_ack.u64_of("pid"),
        Some(me),
        "CLOSE_WAIT->LAST_ACK (the server's close()) pid; {sctx}"
    );
    assert_eq!(
        last_ack.str_of("comm"),
        Some(SERVER_THREAD),
        "CLOSE_WAIT->LAST_ACK comm; {sctx}"
    );

    // --- the listener ---
    let listen = the_one(evs, "the listener's CLOSE->LISTEN", |e| {
        e.is_transition("CLOSE", "LISTEN") && e.lport() == Some(port as u64)
    });
    let listener = socket_life(evs, listen);
    assert_eq!(
        state_path(&listener),
        ["CLOSE", "LISTEN", "CLOSE"],
        "listener state path:\n{}",
        describe_all(listener.iter().copied())
    );
    assert_eq!(listen.u64_of("pid"), Some(me), "CLOSE->LISTEN pid");

    // Nothing else happened in this namespace.
    let ours = [&client, &server, &listener]
        .iter()
        .map(|s| s.iter().filter(|e| is_core(e)).count())
        .sum::<usize>();
    let all = evs.iter().filter(|e| is_core(e)).count();
    if ours != all {
        out.fail(&format!(
            "{} events on other sockets than the client, the server child and the listener",
            all as isize - ours as isize
        ));
    }
}

#[test]
fn ipv4_client_closes_first() {
    check("127.0.0.1".parse().unwrap(), 21101);
}

#[test]
fn ipv6_client_closes_first() {
    check("::1".parse().unwrap(), 21102);
}

/// The tp_btf program (`--state-hook btf`, the default) reads from the socket what the classic
/// tracepoint's record holds: both, attached at once to the same connections (IPv4 and IPv6),
/// report the same state changes field for field.
#[test]
fn both_state_hooks_report_the_same_changes() {
    let ns = Netns::new();
    let btf = Tracer::events(&["--netns", ns.path_str(), "--state-hook", "btf"]);
    let classic = Tracer::events(&["--netns", ns.path_str(), "--state-hook", "tracepoint"]);
    exchange(&ns, "127.0.0.1:21103".parse().unwrap(), Duration::ZERO);
    exchange(&ns, "[::1]:21104".parse().unwrap(), Duration::ZERO);
    let (btf, classic) = (btf.stop(), classic.stop());
    btf.assert_clean();
    classic.assert_clean();
    for (out, program) in [(&btf, "state_stream"), (&classic, "sock_set_state")] {
        let attached = out.stderr.lines().find(|l| l.contains("attached"));
        assert!(
            attached.is_some_and(|l| l.contains(program)),
            "{:?} should attach {program}:\n{}",
            out.args,
            out.stderr
        );
    }
    // Everything the state tracepoint reports, and who was running when it fired.
    let changes = |out: &TracerOutput| {
        let mut v: Vec<String> = out
            .events
            .iter()
            .filter(|e| e.kind() == "state")
            .map(|e| {
                // Every field but the clock's (each program reads it itself) and what is
                // computed from it.
                FIELDS
                    .iter()
                    .filter(|k| !["time", "ts_ns", "dwell_ms"].contains(k))
                    .map(|k| e.get(*k).map_or("-".to_string(), Value::to_string))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        v.sort();
        v
    };
    let (b, c) = (changes(&btf), changes(&classic));
    // Listener, client and server child of each connection: 2 + 5 + 5 changes each.
    assert_eq!(
        b.len(),
        24,
        "state changes seen by the tp_btf program:\n{}",
        b.join("\n")
    );
    assert_eq!(
        b, c,
        "tp_btf (left) and classic tracepoint (right) disagree"
    );
}
