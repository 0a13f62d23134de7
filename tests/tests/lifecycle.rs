//! How the tracer process ends: by itself after --duration, or on SIGTERM, each time with the
//! summary line and exit status 0.
use std::net::SocketAddr;
use std::time::Duration;

use tcptrace_tests::events::is_core;
use tcptrace_tests::scenario::exchange;
use tcptrace_tests::{EventExt, Netns, Tracer};

#[test]
fn duration_stops_by_itself() {
    const PORT: u16 = 21601;
    let ns = Netns::new();
    let t = Tracer::events(&["--duration", "2s", "--netns", ns.path_str()]);
    let addr: SocketAddr = format!("127.0.0.1:{PORT}").parse().unwrap();
    exchange(&ns, addr, Duration::from_millis(10));
    let out = t.wait_exit(Duration::from_secs(8));
    out.assert_clean();
    let since_spawn = out.exited - out.spawned;
    let since_ready = out.exited - out.ready;
    assert!(
        since_spawn >= Duration::from_millis(1950) && since_spawn <= Duration::from_secs(6),
        "--duration 2s: exited {since_spawn:?} after it was started ({since_ready:?} after attaching); stderr:\n{}",
        out.stderr
    );
    assert!(
        since_ready <= Duration::from_millis(3500),
        "--duration 2s: exited {since_ready:?} after attaching; stderr:\n{}",
        out.stderr
    );
    let s = out.summary().unwrap();
    assert!(
        (1.9..=4.0).contains(&s.secs),
        "summary reports {}s for --duration 2s: {}",
        s.secs,
        out.stderr
    );
    // The traffic during those 2 s was reported before it stopped.
    if !out
        .events
        .iter()
        .any(|e| e.is_transition("CLOSE", "SYN_SENT") && e.rport() == Some(PORT as u64))
    {
        out.fail("the connection made during --duration is missing");
    }
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    const PORT: u16 = 21602;
    let ns = Netns::new();
    let t = Tracer::events(&["--port", &PORT.to_string()]);
    exchange(
        &ns,
        format!("127.0.0.1:{PORT}").parse().unwrap(),
        Duration::from_millis(10),
    );
    std::thread::sleep(tcptrace_tests::tracer::SETTLE);
    t.signal(libc::SIGTERM);
    let out = t.wait_exit(Duration::from_secs(5));
    out.assert_clean();
    // Everything that happened before the signal was printed: 5 client + 5 server child +
    // 2 listener transitions.
    if out.events.iter().filter(|e| is_core(e)).count() != 12 {
        out.fail("want the 12 transitions of one connection and its listener");
    }
}

#[test]
fn sigint_exits_cleanly_with_text_output() {
    // Without --json: text lines, summary on stderr, exit 0.
    const PORT: u16 = 21603;
    let ns = Netns::new();
    let t = Tracer::start(&["events", "--netns", ns.path_str()]);
    exchange(
        &ns,
        format!("127.0.0.1:{PORT}").parse().unwrap(),
        Duration::from_millis(10),
    );
    let out = t.stop();
    assert!(out.status.success(), "exit {}: {}", out.status, out.stderr);
    assert!(out.summary().is_some(), "no summary line: {}", out.stderr);
    let text_lines = out.bad_lines.len() + out.events.len();
    assert!(
        out.events.is_empty() && out.bad_lines.iter().any(|l| l.contains(&PORT.to_string())),
        "text mode should print non-JSON lines mentioning port {PORT}; got {text_lines} lines:\n{}",
        out.bad_lines.join("\n")
    );
}
