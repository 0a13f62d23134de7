//! Filters: --netns (path, inode, name), --port (repeatable), -4/-6, --pid. Each test runs
//! traffic the filter must keep and traffic it must drop, and checks both, so a filter that
//! keeps everything or nothing fails.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tcptrace_tests::cmd::run_with_timeout;
use tcptrace_tests::events::{CLIENT_PATH, SERVER_PATH, socket_life, state_path};
use tcptrace_tests::scenario::exchange;
use tcptrace_tests::{EventExt, Netns, Tracer, TracerOutput, describe_all};

const V4: &str = "127.0.0.1";
const V6: &str = "::1";
const HOLD: Duration = Duration::from_millis(20);

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().unwrap(), port)
}

/// The output has a complete connection to `port` in namespace `netns`: the client socket's
/// six transitions and the server child's six.
fn assert_has_connection(out: &TracerOutput, netns: u64, port: u16) {
    let evs: &[Value] = &out.events;
    let p = port as u64;
    let Some(syn) = evs.iter().find(|e| {
        e.is_transition("CLOSE", "SYN_SENT") && e.rport() == Some(p) && e.netns() == Some(netns)
    }) else {
        out.fail(&format!(
            "no client CLOSE->SYN_SENT to port {port} in netns {netns}"
        ));
    };
    let Some(child) = evs.iter().find(|e| {
        e.is_transition("LISTEN", "SYN_RECV") && e.lport() == Some(p) && e.netns() == Some(netns)
    }) else {
        out.fail(&format!(
            "no server child LISTEN->SYN_RECV on port {port} in netns {netns}"
        ));
    };
    let c = socket_life(evs, syn);
    let s = socket_life(evs, child);
    if state_path(&c) != CLIENT_PATH || state_path(&s) != SERVER_PATH {
        out.fail(&format!(
            "incomplete connection on port {port} in netns {netns}"
        ));
    }
}

fn assert_all(out: &TracerOutput, what: &str, pred: impl Fn(&Value) -> bool) {
    let bad: Vec<&Value> = out.events.iter().filter(|e| !pred(e)).collect();
    if !bad.is_empty() {
        out.fail(&format!(
            "{} events are not {what}:\n{}",
            bad.len(),
            describe_all(bad)
        ));
    }
}

#[test]
fn netns_filter_by_path_inode_and_name() {
    let (a, b) = (Netns::new(), Netns::new());
    let inode = a.inode().to_string();
    let by_path = Tracer::events(&["--netns", a.path_str()]);
    let by_inode = Tracer::events(&["--netns", &inode]);
    let by_name = Tracer::events(&["--netns", a.name()]);
    exchange(&a, addr(V4, 21501), HOLD);
    exchange(&b, addr(V4, 21502), HOLD);
    exchange(&a, addr(V6, 21503), HOLD);
    for t in [by_path, by_inode, by_name] {
        let out = t.stop();
        out.assert_clean();
        assert_has_connection(&out, a.inode(), 21501);
        assert_has_connection(&out, a.inode(), 21503);
        assert_all(&out, &format!("in netns {}", a.inode()), |e| {
            e.netns() == Some(a.inode())
        });
    }
}

#[test]
fn port_filter_single_and_repeated() {
    let ns = Netns::new();
    let one = Tracer::events(&["--port", "21511"]);
    let two = Tracer::events(&["-p", "21511", "-p", "21513"]);
    exchange(&ns, addr(V4, 21511), HOLD);
    exchange(&ns, addr(V4, 21512), HOLD);
    exchange(&ns, addr(V6, 21513), HOLD);
    let one = one.stop();
    one.assert_clean();
    assert_has_connection(&one, ns.inode(), 21511);
    assert_all(&one, "on port 21511", |e| e.has_port(21511));

    let two = two.stop();
    two.assert_clean();
    assert_has_connection(&two, ns.inode(), 21511);
    assert_has_connection(&two, ns.inode(), 21513);
    assert_all(&two, "on port 21511 or 21513", |e| {
        e.has_port(21511) || e.has_port(21513)
    });
}

#[test]
fn family_filters() {
    let ns = Netns::new();
    let v6 = Tracer::events(&["-6"]);
    let v4 = Tracer::events(&["-4", "--netns", ns.path_str()]);
    exchange(&ns, addr(V4, 21521), HOLD);
    exchange(&ns, addr(V6, 21522), HOLD);
    let v6 = v6.stop();
    v6.assert_clean();
    assert_has_connection(&v6, ns.inode(), 21522);
    assert_all(&v6, "ipv6", |e| e.str_of("family") == Some("ipv6"));
    assert_all(&v6, "off port 21521 (the IPv4 connection)", |e| {
        !e.has_port(21521)
    });

    let v4 = v4.stop();
    v4.assert_clean();
    assert_has_connection(&v4, ns.inode(), 21521);
    assert_all(&v4, "ipv4", |e| e.str_of("family") == Some("ipv4"));
    assert_all(&v4, "off port 21522 (the IPv6 connection)", |e| {
        !e.has_port(21522)
    });
}

/// Another process (python3) makes a whole connection of its own in the namespace.
const OTHER: &str = r#"
import os, socket, sys
port = int(sys.argv[1])
l = socket.socket(); l.bind(("127.0.0.1", port)); l.listen()
c = socket.create_connection(("127.0.0.1", port), timeout=10)
a, _ = l.accept()
c.sendall(b"x"); c.close()
assert a.recv(10) == b"x"; assert a.recv(10) == b""
a.close(); l.close()
print(os.getpid())
"#;

#[test]
fn pid_filter_keeps_own_sockets_only() {
    let ns = Netns::new();
    let me = std::process::id();
    let by_pid = Tracer::events(&["--pid", &me.to_string()]);
    let all = Tracer::events(&["--netns", ns.path_str()]);
    exchange(&ns, addr(V4, 21531), HOLD);
    let mut py = ns.command("/usr/bin/python3");
    py.args(["-c", OTHER, "21532"]);
    let r = run_with_timeout(&mut py, Duration::from_secs(15));
    assert!(
        r.status.success(),
        "python3 failed: {}\n{}",
        r.status,
        r.stderr
    );
    let other_pid: u64 = r.stdout.trim().parse().expect("python3 printed its pid");
    assert_ne!(other_pid, me as u64);

    // Reference: without --pid the other process's connection is there, under its pid.
    let all = all.stop();
    all.assert_clean();
    assert_has_connection(&all, ns.inode(), 21532);
    if !all.events.iter().any(|e| {
        e.is_transition("CLOSE", "SYN_SENT")
            && e.rport() == Some(21532)
            && e.u64_of("pid") == Some(other_pid)
    }) {
        all.fail(&format!(
            "the other process ({other_pid}) did not show as the connecting process"
        ));
    }

    let by_pid = by_pid.stop();
    by_pid.assert_clean();
    let me = me as u64;
    assert_all(&by_pid, &format!("run by or owned by pid {me}"), |e| {
        e.u64_of("pid") == Some(me) || e.u64_of("owner_pid") == Some(me)
    });
    assert_all(
        &by_pid,
        "off port 21532 (the other process's connection)",
        |e| !e.has_port(21532),
    );
    // Our client socket: every event (its owner is this process).
    let Some(syn) = by_pid.events.iter().find(|e| {
        e.is_transition("CLOSE", "SYN_SENT")
            && e.rport() == Some(21531)
            && e.netns() == Some(ns.inode())
    }) else {
        by_pid.fail("our client's CLOSE->SYN_SENT is missing under --pid");
    };
    let c = socket_life(&by_pid.events, syn);
    if state_path(&c) != CLIENT_PATH {
        by_pid.fail("our client socket's transitions are incomplete under --pid");
    }
}

#[test]
fn netns_and_port_filters_combine() {
    // --netns and --port together: both must hold.
    let (a, b) = (Netns::new(), Netns::new());
    let t = Tracer::events(&["--netns", a.path_str(), "--port", "21541"]);
    exchange(&a, addr(V4, 21541), HOLD);
    exchange(&a, addr(V4, 21542), HOLD);
    exchange(&b, addr(V4, 21541), HOLD);
    let out = t.stop();
    out.assert_clean();
    assert_has_connection(&out, a.inode(), 21541);
    assert_all(
        &out,
        &format!("in netns {} on port 21541", a.inode()),
        |e| e.netns() == Some(a.inode()) && e.has_port(21541),
    );
}
