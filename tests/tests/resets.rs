//! Resets: a connection to a closed port is refused with a RST.
use std::net::{IpAddr, SocketAddr, TcpStream};

use serde_json::Value;
use tcptrace_tests::events::{is_core, socket_life, state_path, the_one};
use tcptrace_tests::scenario::{CLIENT_THREAD, STEP_TIMEOUT};
use tcptrace_tests::{EventExt, Netns, Tracer, describe, describe_all, gettid};

#[test]
fn connect_to_closed_port_is_reset() {
    const PORT: u16 = 21401;
    let ns = Netns::new();
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let addr = SocketAddr::new(ip, PORT);
    // By port, not by namespace: the RST for a port without a socket has no socket to take the
    // namespace from, and this test wants to see it either way.
    let tracer = Tracer::events(&["--port", &PORT.to_string()]);
    let (err, tid) = ns.run_named(CLIENT_THREAD, move || {
        let tid = gettid();
        let err = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
            .expect_err("nothing listens, yet connect() succeeded");
        (err, tid)
    });
    let out = tracer.stop();
    out.assert_clean();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "connect() error: {err}"
    );
    let evs: &[Value] = &out.events;
    let me = std::process::id() as u64;

    let syn = the_one(evs, "the client's CLOSE->SYN_SENT", |e| {
        e.is_transition("CLOSE", "SYN_SENT")
            && e.rport() == Some(PORT as u64)
            && e.netns() == Some(ns.inode())
    });
    assert_eq!(
        syn.u64_of("pid"),
        Some(me),
        "CLOSE->SYN_SENT pid:\n{}",
        describe(syn)
    );
    assert_eq!(
        syn.u64_of("tid"),
        Some(tid as u64),
        "CLOSE->SYN_SENT tid:\n{}",
        describe(syn)
    );
    let client = socket_life(evs, syn);
    let ctx = format!(
        "client socket events:\n{}\nall events:\n{}",
        describe_all(client.iter().copied()),
        describe_all(evs)
    );
    assert_eq!(
        state_path(&client),
        ["CLOSE", "SYN_SENT", "CLOSE"],
        "client state path; {ctx}"
    );

    let rr = the_one(evs, "a reset_received", |e| e.kind() == "reset_received");
    assert_eq!(
        rr.skaddr(),
        syn.skaddr(),
        "reset_received must be on the client socket; {ctx}"
    );
    assert_eq!(
        rr.str_of("state"),
        Some("SYN_SENT"),
        "reset_received state; {ctx}"
    );
    assert_eq!(rr.netns(), Some(ns.inode()), "reset_received netns; {ctx}");
    assert_eq!(rr.rport(), Some(PORT as u64), "reset_received rport; {ctx}");
    assert_eq!(rr.raddr(), Some(ip), "reset_received raddr; {ctx}");
    let client_port = rr
        .lport()
        .filter(|&p| p != 0)
        .unwrap_or_else(|| panic!("reset_received without the client's port; {ctx}"));
    let close = client
        .iter()
        .find(|e| e.is_transition("SYN_SENT", "CLOSE"))
        .unwrap();
    assert!(
        rr.ts_ns() <= close.ts_ns(),
        "the reset must come before SYN_SENT->CLOSE; {ctx}"
    );

    // The RST the closed port sent: no socket, so no state; the reason says so; the local end
    // is the closed port.
    let rs = the_one(evs, "a reset_sent", |e| e.kind() == "reset_sent");
    assert!(
        rs.field("state").is_null(),
        "reset_sent state must be null (no socket); {ctx}"
    );
    assert_eq!(
        rs.str_of("reason"),
        Some("NO_SOCKET"),
        "reset_sent reason; {ctx}"
    );
    assert_eq!(
        rs.lport(),
        Some(PORT as u64),
        "reset_sent lport (the closed port); {ctx}"
    );
    assert_eq!(rs.laddr(), Some(ip), "reset_sent laddr; {ctx}");
    assert_eq!(
        rs.rport(),
        Some(client_port),
        "reset_sent rport (the client's port); {ctx}"
    );
    assert_eq!(rs.raddr(), Some(ip), "reset_sent raddr; {ctx}");
    assert!(
        rs.ts_ns() <= rr.ts_ns(),
        "the RST was sent before it was received; {ctx}"
    );
    // Its namespace may be unknown (no socket to read it from), but if given it must be right.
    match rs.netns() {
        Some(n) => assert_eq!(
            n,
            ns.inode(),
            "reset_sent attributed to the wrong namespace; {ctx}"
        ),
        None => eprintln!("note: reset_sent has no netns (no socket); not checked"),
    }
    // Nothing else used the port: the client socket's events (reset_received included) and the RST.
    assert_eq!(
        evs.iter().filter(|e| is_core(e)).count(),
        client.iter().filter(|e| is_core(e)).count() + 1,
        "unexpected extra events; {ctx}"
    );
}

#[test]
fn closed_port_reset_seen_through_netns_filter() {
    const PORT: u16 = 21402;
    let ns = Netns::new();
    let addr: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
    let tracer = Tracer::events(&["--netns", ns.path_str()]);
    let err = ns.run(move || {
        TcpStream::connect_timeout(&addr, STEP_TIMEOUT).expect_err("connect succeeded")
    });
    let out = tracer.stop();
    out.assert_clean();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "connect() error: {err}"
    );
    let evs: &[Value] = &out.events;
    let rr = the_one(evs, "a reset_received", |e| e.kind() == "reset_received");
    assert_eq!(
        rr.str_of("state"),
        Some("SYN_SENT"),
        "reset_received state:\n{}",
        describe_all(evs)
    );
    for e in evs {
        assert_eq!(
            e.netns(),
            Some(ns.inode()),
            "event outside the namespace:\n{}",
            describe_all(evs)
        );
    }
}
