//! Diagnosis from the sock_diag poller, against ground truth taken inside the test's own
//! namespace: the kernel's counters (/proc/net/netstat, /proc/net/snmp), `ss -tanm` (queues and a
//! listener's own drop counter), `sysctl`, and the test's clock and sockets.
//!
//! Each test makes its own namespace, starts the tracer filtered to it (so the poller looks only
//! there), makes the trouble on purpose (a listener that never accepts or whose backlog
//! somaxconn caps, sockets never closed — before or during tracing, and more of them over time —,
//! short connections, peers that never close, a closed port, unusual sysctls), and checks the
//! JSON summary, the `leak` event lines and the live view.
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tcptrace_tests::diag::{
    array, connect_nonblocking, diagnosis_lines, kernel_counter, listen_with_backlog, listener,
    own_comm, set_linger_zero, ss, ss_listener, sysctl_get, sysctl_set,
};
use tcptrace_tests::outputs::{TempDir, assert_clean_watch, frames, read_summary, watch_stdout};
use tcptrace_tests::scenario::{STEP_TIMEOUT, accept_timeout};
use tcptrace_tests::tracer::SETTLE;
use tcptrace_tests::{Counters, EventExt, Netns, Tracer, describe_all};

/// The tracer prints its ready line, then takes its first snapshot within milliseconds: wait
/// this long after the ready line before making anything the first snapshot must not see.
const FIRST_SNAPSHOT: Duration = Duration::from_millis(300);
/// Poll period used by these tests (`--poll-interval`).
const POLL: Duration = Duration::from_millis(500);
const POLL_ARG: &str = "500ms";
/// What a CLOSE_WAIT leak's client sends and the server never reads.
const UNREAD: &[u8] = b"leak!";

/// How a test's tracer shows what it sees.
#[derive(Clone, Copy)]
enum View {
    /// `events --json`.
    Events,
    /// `watch`, its live view redrawn every 500 ms.
    Live,
}

/// The tracer of these tests: in `ns`, polling every [`POLL`], its JSON summary going to
/// `dir/summary.json`; then `extra`.
fn start_tracer(view: View, ns: &Netns, dir: &TempDir, extra: &[&str]) -> Tracer {
    let sp = dir.arg("summary.json");
    let mut args = match view {
        View::Events => vec!["events", "--json"],
        View::Live => vec!["watch", "--interval", "500ms"],
    };
    args.extend(["--netns", ns.path_str(), "--poll-interval", POLL_ARG]);
    args.extend(["--json-summary", &sp]);
    args.extend_from_slice(extra);
    Tracer::start(&args)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn me() -> u64 {
    std::process::id() as u64
}

/// The tracer's kernel counter deltas must equal the test's own: both cover the same quiet
/// interval around everything the test did (the tracer's first snapshot is taken before the
/// test's first reading, its last one after the test's last reading, and nothing happens in the
/// namespace in between). Every counter the summary reports is checked.
fn assert_counters_match(summary: &Value, before: &Counters, after: &Counters) {
    let kc = summary
        .get("kernel_counters")
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("no kernel_counters object in the summary:\n{summary:#}"));
    for name in [
        "ListenOverflows",
        "ListenDrops",
        "TCPSynRetrans",
        "RetransSegs",
    ] {
        assert!(
            kc.contains_key(name),
            "kernel_counters lacks {name}: {kc:?}"
        );
    }
    for (name, v) in kc {
        let key = [format!("TcpExt.{name}"), format!("Tcp.{name}")]
            .into_iter()
            .find(|k| before.0.contains_key(k))
            .unwrap_or_else(|| {
                panic!("kernel_counters.{name} is in neither /proc/net/netstat nor /proc/net/snmp")
            });
        let want = before.delta(after, &key);
        assert_eq!(
            v.as_i64(),
            Some(want),
            "kernel_counters.{name}: the namespace's {key} rose by {want} over the run; all: {kc:?}"
        );
    }
}

/// Closes the clients with a RST (SYN_SENT ones just vanish), so none of them sends another
/// SYN, ACK or FIN to the listener.
fn abort_all(clients: Vec<TcpStream>) {
    for c in &clients {
        set_linger_zero(c);
    }
    drop(clients);
}

#[test]
fn full_accept_queue_drops_match_the_kernel() {
    const PORT: u16 = 23101;
    const CLIENTS: usize = 20;
    let ns = Netns::new();
    let dir = TempDir::new("diag-overflow");
    let somaxconn = sysctl_get(&ns, "net.core.somaxconn");
    let tracer = start_tracer(View::Events, &ns, &dir, &[]);
    thread::sleep(FIRST_SNAPSHOT);
    let before = Counters::read(&ns);
    let a = addr(PORT);
    // A listener with backlog 1 that never accepts; 20 clients at once.
    let (server, clients) = ns.run(move || {
        let l = listen_with_backlog(a, 1);
        let c = connect_nonblocking(a, CLIENTS);
        (l, c)
    });
    // Dropped SYNs come back after 1 s and 3 s.
    thread::sleep(Duration::from_millis(3300));
    abort_all(clients);
    thread::sleep(Duration::from_millis(300));
    let after = Counters::read(&ns);
    let ss_l = ss_listener(&ns, PORT);
    let out = tracer.stop();
    drop(server);
    out.assert_clean();
    let s = read_summary(dir.file("summary.json").as_path());

    // Ground truth: the namespace's counters and the listener's own drop counter.
    let drops_kernel = before.delta(&after, "TcpExt.ListenDrops");
    assert!(
        drops_kernel >= CLIENTS as i64 - 2,
        "the kernel dropped only {drops_kernel} SYNs for a backlog-1 listener and {CLIENTS} clients: \
         the scenario did not overflow the queue"
    );
    assert_eq!(
        ss_l.drops,
        Some(drops_kernel as u64),
        "ss's d<N> of the only listener vs. the namespace's ListenDrops: {ss_l:?}"
    );
    assert_eq!(ss_l.send_q, 1, "ss shows the accept queue limit: {ss_l:?}");

    let l = listener(&s, ns.inode(), PORT);
    let ctx = format!("listener: {l:#}");
    assert_eq!(
        l["drops"].as_i64(),
        Some(drops_kernel),
        "listener drops vs. the namespace's ListenDrops delta; {ctx}"
    );
    assert_eq!(
        kernel_counter(&s, "ListenDrops"),
        drops_kernel,
        "kernel_counters.ListenDrops; {ctx}"
    );
    assert_counters_match(&s, &before, &after);
    assert_eq!(l["backlog_limit"].as_u64(), Some(1), "backlog_limit; {ctx}");
    assert_eq!(l["addr"].as_str(), Some("127.0.0.1"), "addr; {ctx}");
    // The accept queue holds backlog + 1 = 2 before it counts as full.
    let peak = l["queue_peak"]
        .as_u64()
        .unwrap_or_else(|| panic!("queue_peak; {ctx}"));
    assert!(
        (1..=2).contains(&peak),
        "queue_peak {peak}, want 1..=2; {ctx}"
    );
    let full = l["times_full"]
        .as_u64()
        .unwrap_or_else(|| panic!("times_full; {ctx}"));
    let max_polls = (secs(out.exited - out.ready) / secs(POLL)).ceil() as u64 + 2;
    assert!(
        (1..=max_polls).contains(&full),
        "times_full {full}: the queue was full for ~3.5 s of polls every {POLL:?} (at most {max_polls} polls); {ctx}"
    );
    assert_eq!(l["pid"].as_u64(), Some(me()), "owner pid; {ctx}");
    let comm = own_comm();
    assert_eq!(l["comm"].as_str(), Some(comm.as_str()), "owner comm; {ctx}");
    let d = l["diagnosis"]
        .as_str()
        .unwrap_or_else(|| panic!("diagnosis; {ctx}"));
    let want = format!(
        "accept queue of 127.0.0.1:{PORT} (limit 1 = listen() backlog; net.core.somaxconn={somaxconn}) full {full} times, {drops_kernel} SYNs dropped"
    );
    assert!(
        d.contains(&want),
        "listener diagnosis should contain\n  {want}\n; {ctx}"
    );
    let lines = diagnosis_lines(&s);
    let head = format!("listener 127.0.0.1:{PORT} ({comm}[{}]): {want}", me());
    assert!(
        lines.iter().any(|x| x.starts_with(&head)),
        "the summary's diagnosis should have a line starting with\n  {head}\nit has: {lines:#?}"
    );
    assert_eq!(
        s["sysctls"]["net.core.somaxconn"].as_str(),
        Some(somaxconn.as_str()),
        "sysctls.net.core.somaxconn"
    );
}

#[test]
fn somaxconn_caps_the_backlog_and_the_live_view_shows_the_listener() {
    const PORT: u16 = 23701;
    const CLIENTS: usize = 12;
    let ns = Netns::new();
    sysctl_set(&ns, "net.core.somaxconn", "2");
    let dir = TempDir::new("diag-somaxconn");
    let tracer = start_tracer(View::Live, &ns, &dir, &[]);
    thread::sleep(FIRST_SNAPSHOT);
    let before = Counters::read(&ns);
    let a = addr(PORT);
    // std listens with a backlog of 128; somaxconn=2 caps it.
    let (server, clients) = ns.run(move || {
        let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
        let c = connect_nonblocking(a, CLIENTS);
        (l, c)
    });
    thread::sleep(Duration::from_millis(1500));
    abort_all(clients);
    thread::sleep(Duration::from_millis(300));
    let after = Counters::read(&ns);
    let ss_l = ss_listener(&ns, PORT);
    let out = tracer.stop();
    drop(server);
    assert_clean_watch(&out);
    let s = read_summary(dir.file("summary.json").as_path());

    let drops_kernel = before.delta(&after, "TcpExt.ListenDrops");
    assert!(
        drops_kernel > 0,
        "no SYN dropped for a listener capped at 2 with {CLIENTS} clients"
    );
    assert_eq!(
        ss_l.send_q, 2,
        "ss: accept queue limit = somaxconn; {ss_l:?}"
    );
    assert_eq!(ss_l.drops, Some(drops_kernel as u64), "ss drops; {ss_l:?}");
    let l = listener(&s, ns.inode(), PORT);
    let ctx = format!("listener: {l:#}");
    assert_eq!(l["backlog_limit"].as_u64(), Some(2), "backlog_limit; {ctx}");
    assert_eq!(l["drops"].as_i64(), Some(drops_kernel), "drops; {ctx}");
    assert_counters_match(&s, &before, &after);
    let d = l["diagnosis"].as_str().unwrap_or_default();
    let want = format!("accept queue of 127.0.0.1:{PORT} (limit 2 = net.core.somaxconn) full ");
    assert!(
        d.contains(&want),
        "diagnosis should contain `{want}`; {ctx}"
    );
    assert!(
        d.contains(&format!(", {drops_kernel} SYNs dropped")),
        "diagnosis should count {drops_kernel} SYNs dropped; {ctx}"
    );
    assert_eq!(s["sysctls"]["net.core.somaxconn"].as_str(), Some("2"));

    // The live view's LISTENER table: the row of this listener, limit 2, some drops, our owner.
    let fr = frames(watch_stdout(&out));
    let owner: String = format!("{}[{}]", own_comm(), me())
        .chars()
        .take(18)
        .collect();
    let rows: Vec<Vec<String>> = fr
        .iter()
        .flat_map(|f| f.iter())
        .filter(|l| l.starts_with(&format!("127.0.0.1:{PORT} ")))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    let all = fr
        .iter()
        .map(|f| f.join("\n"))
        .collect::<Vec<_>>()
        .join("\n--\n");
    assert!(
        !rows.is_empty(),
        "no LISTENER row for 127.0.0.1:{PORT} in any frame:\n{all}"
    );
    assert!(
        fr.iter()
            .any(|f| f.iter().any(|l| l.starts_with("LISTENER (accept queue)"))),
        "no LISTENER table header:\n{all}"
    );
    for r in &rows {
        // ADDR QUEUE PEAK LIMIT DROPS OWNER
        assert_eq!(r.len(), 6, "LISTENER row {r:?}:\n{all}");
        assert_eq!(r[3], "2", "LIMIT column of {r:?}:\n{all}");
        let drops: i64 = r[4].parse().unwrap_or_else(|_| panic!("DROPS of {r:?}"));
        assert!(
            (0..=drops_kernel).contains(&drops),
            "DROPS {drops} in {r:?} vs. {drops_kernel} in total:\n{all}"
        );
        assert_eq!(r[5], owner, "OWNER column of {r:?}:\n{all}");
    }
    let last = rows.last().unwrap();
    assert!(
        last[4].parse::<i64>().unwrap() > 0,
        "the last LISTENER row shows no drops: {last:?}:\n{all}"
    );
}

/// Inside the calling thread's namespace: `n` connections to `listener`; returns
/// (client, accepted server stream, client address) for each.
fn connect_pairs(
    l: &TcpListener,
    a: SocketAddr,
    n: usize,
) -> Vec<(TcpStream, TcpStream, SocketAddr)> {
    (0..n)
        .map(|_| {
            let c = TcpStream::connect_timeout(&a, STEP_TIMEOUT)
                .unwrap_or_else(|e| panic!("connect {a}: {e}"));
            let (srv, peer) = accept_timeout(l, STEP_TIMEOUT);
            assert_eq!(peer, c.local_addr().unwrap());
            (c, srv, peer)
        })
        .collect()
}

/// Binds a connected socket to an interface (SO_BINDTODEVICE).
fn bind_to_device(s: &TcpStream, dev: &str) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a buffer of the length given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            dev.as_ptr().cast(),
            dev.len() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_BINDTODEVICE {dev}: {}", std::io::Error::last_os_error());
}

/// K leaked server sockets: the client sent [`UNREAD`] and closed; the server never reads nor
/// closes. Returns the listener, the leaked streams, the clients' addresses, and the instants
/// around the clients' closes (the server sockets entered CLOSE_WAIT in between).
fn make_leaks(
    ns: &Netns,
    a: SocketAddr,
    k: usize,
) -> (
    TcpListener,
    Vec<TcpStream>,
    BTreeSet<SocketAddr>,
    Instant,
    Instant,
) {
    ns.run(move || {
        let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
        let pairs = connect_pairs(&l, a, k);
        let t0 = Instant::now();
        let mut leaked = Vec::new();
        let mut peers = BTreeSet::new();
        for (mut c, srv, peer) in pairs {
            c.write_all(UNREAD).expect("client write");
            drop(c);
            leaked.push(srv);
            peers.insert(peer);
        }
        let t1 = Instant::now();
        (l, leaked, peers, t0, t1)
    })
}

/// The CLOSE-WAIT sockets of local port `port` by `ss`: (peer, Recv-Q).
fn ss_close_wait(ns: &Netns, port: u16) -> Vec<(String, u64)> {
    ss(ns)
        .into_iter()
        .filter(|s| s.state == "CLOSE-WAIT" && s.local.port() == port)
        .map(|s| (s.peer, s.recv_q))
        .collect()
}

/// The summary's `close_wait_leaks` on local port `port`, as (raddr:rport, leak).
fn leaks_on(s: &Value, port: u16) -> Vec<(SocketAddr, &Value)> {
    array(s, "close_wait_leaks")
        .iter()
        .filter(|l| l["lport"].as_u64() == Some(port as u64))
        .map(|l| {
            let peer: SocketAddr = format!(
                "{}:{}",
                l["raddr"].as_str().unwrap_or("?"),
                l["rport"].as_u64().unwrap_or(0)
            )
            .parse()
            .unwrap_or_else(|_| panic!("leak without a remote address: {l}"));
            (peer, l)
        })
        .collect()
}

/// What every reported leak of this test must say about itself (besides its age).
fn check_leak_identity(l: &Value, ns: &Netns, port: u16, comm: &str, ctx: &str) {
    assert_eq!(l["pid"].as_u64(), Some(me()), "leak pid: {l}; {ctx}");
    assert_eq!(l["comm"].as_str(), Some(comm), "leak comm: {l}; {ctx}");
    assert_eq!(
        l["netns"].as_u64(),
        Some(ns.inode()),
        "leak netns: {l}; {ctx}"
    );
    assert_eq!(
        l["laddr"].as_str(),
        Some("127.0.0.1"),
        "leak laddr: {l}; {ctx}"
    );
    assert_eq!(
        l["lport"].as_u64(),
        Some(port as u64),
        "leak lport: {l}; {ctx}"
    );
    // recv_q is documented as unread bytes: the 5 the client sent. (The kernel's rcv_nxt -
    // copied_seq, which `ss` shows, also counts the FIN's sequence number: 6.)
    assert_eq!(
        l["recv_q"].as_u64(),
        Some(UNREAD.len() as u64),
        "leak recv_q is documented as unread bytes: {} were sent and never read (the kernel's \
         rcv_nxt - copied_seq, which ss shows, is one more in CLOSE_WAIT: the FIN's sequence \
         number): {l}; {ctx}",
        UNREAD.len()
    );
}

#[test]
fn close_wait_leaks_have_owner_exact_age_and_unread_bytes() {
    const PORT: u16 = 23201;
    const K: usize = 3;
    const M: usize = 2;
    let ns = Netns::new();
    let dir = TempDir::new("diag-leak");
    let tracer = start_tracer(View::Events, &ns, &dir, &["--close-wait-threshold", "2s"]);
    thread::sleep(FIRST_SNAPSHOT);
    let a = addr(PORT);
    // K+M connections; the clients all close; the server reads and closes M of them (promptly),
    // and leaks K with unread data.
    let (server, leaked, leaked_peers, closed_peers, close_start, close_end) = ns.run(move || {
        let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
        let pairs = connect_pairs(&l, a, K + M);
        let t0 = Instant::now();
        let mut leaked = Vec::new();
        let mut leaked_peers = BTreeSet::new();
        let mut closing = Vec::new();
        for (i, (mut c, srv, peer)) in pairs.into_iter().enumerate() {
            if i < K {
                c.write_all(UNREAD).expect("client write");
                drop(c);
                leaked.push(srv);
                leaked_peers.insert(peer);
            } else {
                drop(c);
                closing.push((srv, peer));
            }
        }
        let t1 = Instant::now();
        let mut closed_peers = BTreeSet::new();
        for (mut srv, peer) in closing {
            srv.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
            let mut buf = Vec::new();
            srv.read_to_end(&mut buf).expect("server read to EOF");
            assert!(buf.is_empty());
            drop(srv);
            closed_peers.insert(peer);
        }
        (l, leaked, leaked_peers, closed_peers, t0, t1)
    });
    // Past the 2 s threshold, plus polls.
    thread::sleep((close_end + Duration::from_secs(4)).saturating_duration_since(Instant::now()));
    let cw = ss_close_wait(&ns, PORT);
    let stop_at = Instant::now();
    let out = tracer.stop();
    drop(leaked);
    drop(server);
    out.assert_clean();
    let s = read_summary(dir.file("summary.json").as_path());
    let comm = own_comm();

    // Ground truth: ss sees exactly the K leaked sockets in CLOSE_WAIT.
    let cw_peers: BTreeSet<String> = cw.iter().map(|(p, _)| p.clone()).collect();
    let want_peers: BTreeSet<String> = leaked_peers.iter().map(|p| p.to_string()).collect();
    assert_eq!(cw_peers, want_peers, "ss CLOSE-WAIT sockets: {cw:?}");

    // The summary: exactly the K leaks, with exact ages (the tracer saw them enter CLOSE_WAIT).
    let leaks = leaks_on(&s, PORT);
    let ctx = format!(
        "close_wait_leaks: {:#}\nleaked client ports {leaked_peers:?}, properly closed {closed_peers:?}",
        s["close_wait_leaks"]
    );
    assert_eq!(leaks.len(), K, "number of leaks on port {PORT}; {ctx}");
    assert_eq!(
        array(&s, "close_wait_leaks").len(),
        K,
        "leaks in the whole namespace; {ctx}"
    );
    let got: BTreeSet<SocketAddr> = leaks.iter().map(|(p, _)| *p).collect();
    assert_eq!(got, leaked_peers, "the leaked connections; {ctx}");
    assert!(
        got.is_disjoint(&closed_peers),
        "a properly closed connection reported as a leak; {ctx}"
    );
    // The summary's age is taken at exit: after the stop signal, before the exit.
    let lo = secs(stop_at + SETTLE - close_end) - 0.02;
    let hi = secs(out.exited - close_start) + 0.02;
    for (_, l) in &leaks {
        check_leak_identity(l, &ns, PORT, &comm, &ctx);
        assert_eq!(
            l["age_is_lower_bound"].as_bool(),
            Some(false),
            "the tracer saw the socket enter CLOSE_WAIT: {l}; {ctx}"
        );
        let age = l["age_s"].as_f64().unwrap_or_else(|| panic!("age_s: {l}"));
        assert!(
            (lo..=hi).contains(&age),
            "leak age_s {age}, want within [{lo:.2}, {hi:.2}] (the test's clock around the close and the tracer's exit): {l}; {ctx}"
        );
    }
    let by = array(&s, "close_wait_leaks_by_process");
    assert_eq!(by.len(), 1, "close_wait_leaks_by_process: {by:#?}");
    assert_eq!(by[0]["pid"].as_u64(), Some(me()), "by process: {by:#?}");
    assert_eq!(
        by[0]["comm"].as_str(),
        Some(comm.as_str()),
        "by process: {by:#?}"
    );
    assert_eq!(
        by[0]["count"].as_u64(),
        Some(K as u64),
        "by process: {by:#?}"
    );
    let lines = diagnosis_lines(&s);
    let want = format!("{comm}[{}] holds {K} sockets in CLOSE_WAIT", me());
    assert!(
        lines.iter().any(|l| l.starts_with(&want)),
        "the diagnosis should have a line starting with `{want}`: {lines:#?}"
    );

    // The event lines: one `leak` per leaked socket, when it crossed the threshold (at the
    // first poll after 2 s in CLOSE_WAIT).
    let evs: &[Value] = &out.events;
    let leak_evs: Vec<&Value> = evs.iter().filter(|e| e.kind() == "leak").collect();
    let ectx = format!("leak events:\n{}", describe_all(leak_evs.iter().copied()));
    assert_eq!(leak_evs.len(), K, "number of leak lines; {ectx}");
    let ev_peers: BTreeSet<SocketAddr> = leak_evs
        .iter()
        .map(|e| SocketAddr::new(e.raddr().unwrap(), e.rport().unwrap() as u16))
        .collect();
    assert_eq!(ev_peers, leaked_peers, "leak lines' remote ends; {ectx}");
    for e in &leak_evs {
        assert_eq!(e.str_of("state"), Some("CLOSE_WAIT"), "{e}");
        assert_eq!(e.u64_of("owner_pid"), Some(me()), "owner_pid: {e}");
        assert_eq!(
            e.str_of("owner_comm"),
            Some(comm.as_str()),
            "owner_comm: {e}"
        );
        assert_eq!(e.u64_of("pid"), Some(me()), "pid: {e}");
        assert_eq!(e.netns(), Some(ns.inode()), "netns: {e}");
        assert_eq!(e.lport(), Some(PORT as u64), "lport: {e}");
        assert_eq!(
            e.field("age_is_lower_bound").as_bool(),
            Some(false),
            "age_is_lower_bound: {e}"
        );
        assert_eq!(
            e.u64_of("recv_q"),
            Some(UNREAD.len() as u64),
            "leak line recv_q is documented as unread bytes: {} were never read (ss shows \
             {cw:?}, which counts the FIN too): {e}",
            UNREAD.len()
        );
        let age = e.f64_of("age_s").unwrap_or_else(|| panic!("age_s: {e}"));
        let max = 2.0 + secs(POLL) + 0.25;
        assert!(
            (2.0..=max).contains(&age),
            "a leak line comes at the first poll past the 2 s threshold: age_s {age}, want 2.0..={max}: {e}"
        );
    }
}

#[test]
fn leaks_made_before_tracing_have_lower_bound_ages() {
    const PORT: u16 = 23301;
    const K: usize = 2;
    let ns = Netns::new();
    let dir = TempDir::new("diag-seeded");
    let (server, leaked, peers, _t0, close_end) = make_leaks(&ns, addr(PORT), K);
    thread::sleep(Duration::from_secs(1));
    let tracer = start_tracer(View::Live, &ns, &dir, &["--close-wait-threshold", "1s"]);
    let ready = tracer.ready_at();
    // Long enough that the last polls (the window `growing` looks at: 5 polls) all come after
    // the leaks crossed the threshold (at the poll ~1 s after the first).
    thread::sleep((ready + Duration::from_secs(4)).saturating_duration_since(Instant::now()));
    let stop_at = Instant::now();
    let out = tracer.stop();
    drop(leaked);
    drop(server);
    assert_clean_watch(&out);
    let s = read_summary(dir.file("summary.json").as_path());
    let comm = own_comm();

    let leaks = leaks_on(&s, PORT);
    let ctx = format!("close_wait_leaks: {:#}", s["close_wait_leaks"]);
    assert_eq!(leaks.len(), K, "number of leaks; {ctx}");
    let got: BTreeSet<SocketAddr> = leaks.iter().map(|(p, _)| *p).collect();
    assert_eq!(got, peers, "the leaked connections; {ctx}");
    // The tracer never saw them enter CLOSE_WAIT: the age counts from its first snapshot
    // (just after the ready line), so it is at most the tracing time, about 1 s short of the
    // true age.
    let true_age = secs(out.exited - close_end);
    let lo = secs(stop_at + SETTLE - ready) - 0.3;
    let hi = secs(out.exited - ready) + 0.05;
    assert!(
        hi + 0.8 < true_age,
        "test setup: the sockets were not old enough before tracing ({true_age:.2} s vs. {hi:.2} s)"
    );
    for (_, l) in &leaks {
        check_leak_identity(l, &ns, PORT, &comm, &ctx);
        assert_eq!(
            l["age_is_lower_bound"].as_bool(),
            Some(true),
            "the socket was in CLOSE_WAIT before tracing: {l}; {ctx}"
        );
        let age = l["age_s"].as_f64().unwrap_or_else(|| panic!("age_s: {l}"));
        assert!(
            age >= 1.0 && (lo..=hi).contains(&age),
            "lower-bound age_s {age}: want >= 1 (the threshold) and within [{lo:.2}, {hi:.2}] \
             (from the first snapshot to the exit; the true age is {true_age:.2} s): {l}; {ctx}"
        );
    }
    let by = array(&s, "close_wait_leaks_by_process");
    assert_eq!(by.len(), 1, "close_wait_leaks_by_process: {by:#?}");
    assert_eq!(by[0]["pid"].as_u64(), Some(me()), "{by:#?}");
    assert_eq!(by[0]["count"].as_u64(), Some(K as u64), "{by:#?}");
    assert_eq!(
        by[0]["growing"].as_bool(),
        Some(false),
        "the leak count was stable over the last polls: {by:#?}"
    );

    // The live view: `CLOSE_WAIT LEAKS 2: comm[pid] 2` once they crossed the threshold.
    let fr = frames(watch_stdout(&out));
    let all = fr
        .iter()
        .map(|f| f.join("\n"))
        .collect::<Vec<_>>()
        .join("\n--\n");
    let want = format!("CLOSE_WAIT LEAKS {K}: {comm}[{}] {K}", me());
    let leak_lines: Vec<&String> = fr
        .iter()
        .flat_map(|f| f.iter())
        .filter(|l| l.starts_with("CLOSE_WAIT LEAKS"))
        .collect();
    assert!(
        !leak_lines.is_empty(),
        "no `CLOSE_WAIT LEAKS` line in any frame:\n{all}"
    );
    // (Whether a frame drawn between a poll and the next may show the owner as `?[?]` is
    // live_view_names_the_owner_of_every_leak's business.)
    for l in &leak_lines {
        assert!(
            l.starts_with(&format!("CLOSE_WAIT LEAKS {K}: ")),
            "live view leak line `{l}`: want {K} leaks:\n{all}"
        );
    }
    let last = fr.last().unwrap();
    assert!(
        last.contains(&want),
        "the last frame should show `{want}` (owner known, count stable):\n{}",
        last.join("\n")
    );
}

/// The live view counts a socket as leaked as soon as its time in CLOSE_WAIT passes the
/// threshold by the clock, while owners are looked up at polls: a frame drawn in between must
/// still name the owner. Polls every 3 s, threshold 4 s, a leak made just after the first poll:
/// it is seen (young) by the poll at 3 s, passes the threshold at ~4.3 s and is next polled at
/// 6 s; frames every 200 ms fall in between.
#[test]
fn live_view_names_the_owner_of_every_leak() {
    const PORT: u16 = 24001;
    let ns = Netns::new();
    let dir = TempDir::new("diag-live-owner");
    let sp = dir.arg("summary.json");
    let tracer = Tracer::start(&[
        "watch",
        "--netns",
        ns.path_str(),
        "--close-wait-threshold",
        "4s",
        "--poll-interval",
        "3s",
        "--interval",
        "200ms",
        "--json-summary",
        &sp,
    ]);
    let ready = tracer.ready_at();
    thread::sleep(FIRST_SNAPSHOT);
    let (server, leaked, peers, _, _) = make_leaks(&ns, addr(PORT), 1);
    thread::sleep((ready + Duration::from_millis(6700)).saturating_duration_since(Instant::now()));
    let out = tracer.stop();
    drop(leaked);
    drop(server);
    assert_clean_watch(&out);
    let s = read_summary(dir.file("summary.json").as_path());
    let got: BTreeSet<SocketAddr> = leaks_on(&s, PORT).iter().map(|(p, _)| *p).collect();
    assert_eq!(got, peers, "close_wait_leaks: {:#}", s["close_wait_leaks"]);
    assert_eq!(
        s["close_wait_leaks"][0]["pid"].as_u64(),
        Some(me()),
        "the summary names the owner: {:#}",
        s["close_wait_leaks"]
    );

    let fr = frames(watch_stdout(&out));
    let all = fr
        .iter()
        .map(|f| f.join("\n"))
        .collect::<Vec<_>>()
        .join("\n--\n");
    let want = format!("CLOSE_WAIT LEAKS 1: {}[{}] 1", own_comm(), me());
    let leak_lines: Vec<&String> = fr
        .iter()
        .flat_map(|f| f.iter())
        .filter(|l| l.starts_with("CLOSE_WAIT LEAKS"))
        .collect();
    assert!(
        leak_lines.len() >= 3,
        "the leak should show in the frames of its last ~2 s:\n{all}"
    );
    let bad: Vec<&&String> = leak_lines
        .iter()
        .filter(|l| l.as_str() != want && l.strip_prefix(&want) != Some("+"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} live view leak lines do not name the owner (`{want}`, `+` allowed): {bad:?}\n{all}",
        bad.len(),
        leak_lines.len()
    );
}

/// Inside the calling thread's namespace: `n` connections to `a` (accepted by `l`), each client
/// closing first, so its side ends in TIME_WAIT. One at a time and in order (accept before the
/// client closes, EOF before the server closes): were the client's last handshake ACK still
/// queued on another CPU when the server's socket is gone, the listener would answer it with a
/// RST, which kills the client's TIME_WAIT (RFC 1337) and leaves fewer than `n`.
fn leave_clients_in_time_wait(l: &TcpListener, a: SocketAddr, n: usize) {
    for _ in 0..n {
        let c = TcpStream::connect_timeout(&a, STEP_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect {a}: {e}"));
        let (mut srv, _) = accept_timeout(l, STEP_TIMEOUT);
        drop(c);
        srv.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
        let mut buf = Vec::new();
        srv.read_to_end(&mut buf).expect("server read to EOF");
        drop(srv);
    }
}

#[test]
fn time_wait_sockets_are_counted_by_remote() {
    const PORT: u16 = 23401;
    const N: usize = 50;
    let ns = Netns::new();
    // On loopback, tcp_tw_reuse=2 (the default) lets a new connect() take over a TIME_WAIT
    // socket's port, which would make the count depend on port choice: turn it off.
    sysctl_set(&ns, "net.ipv4.tcp_tw_reuse", "0");
    let dir = TempDir::new("diag-tw");
    let tracer = start_tracer(View::Live, &ns, &dir, &[]);
    thread::sleep(FIRST_SNAPSHOT);
    let a = addr(PORT);
    // N short connections; the client closes first, so its side ends in TIME_WAIT.
    ns.run(move || {
        let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
        leave_clients_in_time_wait(&l, a, N);
    });
    let count_tw = |ns: &Netns| {
        ss(ns)
            .iter()
            .filter(|s| s.state == "TIME-WAIT" && s.peer == a.to_string())
            .count()
    };
    // The last FINs are handled in softirq: wait (bounded) for all N to be in TIME_WAIT.
    let deadline = Instant::now() + Duration::from_secs(3);
    while count_tw(&ns) < N && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    // Let a poll count them (every poll reads sockstat; the sockets themselves are dumped at
    // the first poll, every fifteenth and the last) and a frame after it show them.
    thread::sleep(POLL * 2 + Duration::from_millis(600));
    let out_ss = ns.exec(&["ss", "-tan", "state", "time-wait"]);
    let tw_ss = String::from_utf8_lossy(&out_ss.stdout)
        .lines()
        .skip(1)
        .count() as u64;
    let out = tracer.stop();
    assert_clean_watch(&out);
    let s = read_summary(dir.file("summary.json").as_path());
    assert_eq!(
        tw_ss,
        N as u64,
        "ground truth: ss should show the {N} clients in TIME_WAIT:\n{}\nresets {:#}\ncounters {:#}",
        String::from_utf8_lossy(&ns.exec(&["ss", "-tan"]).stdout),
        s["resets_by_state"],
        s["kernel_counters"]
    );

    let tw = &s["time_wait"];
    let ctx = format!("time_wait: {tw:#}");
    let count = tw["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("count; {ctx}"));
    assert!(
        count.abs_diff(tw_ss) <= 2 && count >= N as u64 - 2,
        "time_wait.count {count}, ss counted {tw_ss} (want within 2, and >= {}); {ctx}",
        N - 2
    );
    let top = &tw["by_remote"][0];
    assert_eq!(
        top["raddr"].as_str(),
        Some("127.0.0.1"),
        "by_remote[0]; {ctx}"
    );
    assert_eq!(
        top["rport"].as_u64(),
        Some(PORT as u64),
        "by_remote[0]; {ctx}"
    );
    let top_n = top["count"].as_u64().unwrap_or(0);
    assert!(
        top_n >= N as u64 - 2 && top_n <= count,
        "by_remote[0].count {top_n}; {ctx}"
    );
    assert_eq!(
        tw["port_exhaustion"].as_array().map(Vec::len),
        Some(0),
        "{N} ports are far from exhausting ip_local_port_range; {ctx}"
    );
    assert_eq!(
        s["fin_wait2_timeouts"].as_u64(),
        Some(0),
        "every FIN_WAIT2 socket became TIME_WAIT, none timed out"
    );
    assert!(
        array(&s, "close_wait_leaks").is_empty(),
        "no leaks: {:#}",
        s["close_wait_leaks"]
    );

    // The live view's line, in the frames after the connections: `TIME_WAIT n  FIN_WAIT2 timeouts 0`.
    let fr = frames(watch_stdout(&out));
    let all = fr
        .iter()
        .map(|f| f.join("\n"))
        .collect::<Vec<_>>()
        .join("\n--\n");
    let last = fr.last().unwrap();
    let line = last
        .iter()
        .find(|l| l.starts_with("TIME_WAIT "))
        .unwrap_or_else(|| panic!("no TIME_WAIT line in the last frame:\n{all}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(w.len(), 5, "`TIME_WAIT n  FIN_WAIT2 timeouts n`: `{line}`");
    assert_eq!(&w[2..4], ["FIN_WAIT2", "timeouts"], "`{line}`");
    let shown: u64 = w[1].parse().unwrap_or_else(|_| panic!("`{line}`"));
    assert!(
        shown.abs_diff(tw_ss) <= 2,
        "the live view shows {shown} in TIME_WAIT, ss {tw_ss}: `{line}`"
    );
    assert_eq!(w[4], "0", "FIN_WAIT2 timeouts in `{line}`");
}

#[test]
fn refused_connection_resets_by_state_and_diagnosis() {
    const PORT: u16 = 23501;
    let ns = Netns::new();
    let dir = TempDir::new("diag-rst");
    let tracer = start_tracer(View::Events, &ns, &dir, &[]);
    thread::sleep(FIRST_SNAPSHOT);
    let before = Counters::read(&ns);
    let a = addr(PORT);
    let err = ns.run(move || {
        TcpStream::connect_timeout(&a, STEP_TIMEOUT)
            .expect_err("nothing listens, yet connect() succeeded")
    });
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "connect(): {err}"
    );
    let after = Counters::read(&ns);
    let out = tracer.stop();
    out.assert_clean();
    let s = read_summary(dir.file("summary.json").as_path());

    assert_eq!(
        before.delta(&after, "Tcp.OutRsts"),
        1,
        "ground truth: one RST sent"
    );
    assert_counters_match(&s, &before, &after);
    let rbs = s["resets_by_state"]
        .as_object()
        .unwrap_or_else(|| panic!("no resets_by_state object:\n{s:#}"));
    let got: Vec<(&str, u64)> = rbs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_u64().unwrap_or(u64::MAX)))
        .filter(|(_, v)| *v != 0)
        .collect();
    assert_eq!(
        got,
        [("NO_SOCKET", 1), ("SYN_SENT", 1)],
        "one RST sent for the closed port (no socket), received by the client in SYN_SENT: {rbs:?}"
    );
    let lines = diagnosis_lines(&s);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("1 resets received in SYN_SENT: connection refused")),
        "diagnosis should explain the reset received in SYN_SENT as a refused connection: {lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("1 resets sent in NO_SOCKET: ") && l.contains("nobody listens")),
        "diagnosis should explain the reset sent for a port without a socket: {lines:#?}"
    );
}

/// A local port range of 10, every port in TIME_WAIT towards one listener: with tcp_tw_reuse=0
/// the next connect() fails with EADDRNOTAVAIL and the tracer says so and names the sysctl; with
/// tcp_tw_reuse=1 (and a 1 ms reuse delay) the next connect() succeeds and the tracer says
/// why instead of predicting a failure.
#[test]
fn port_exhaustion_is_judged_by_tcp_tw_reuse() {
    const PORT: u16 = 23420;
    const PORTS: usize = 10;
    for reuse in ["0", "1"] {
        let ns = Netns::new();
        sysctl_set(&ns, "net.ipv4.ip_local_port_range", "40000 40009");
        sysctl_set(&ns, "net.ipv4.tcp_tw_reuse", reuse);
        sysctl_set(&ns, "net.ipv4.tcp_tw_reuse_delay", "1");
        let dir = TempDir::new("diag-tw-reuse");
        let tracer = start_tracer(View::Events, &ns, &dir, &[]);
        thread::sleep(FIRST_SNAPSHOT);
        let a = addr(PORT);
        let next = ns.run(move || {
            let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
            leave_clients_in_time_wait(&l, a, PORTS);
            thread::sleep(Duration::from_millis(20));
            TcpStream::connect_timeout(&a, STEP_TIMEOUT).map(|c| c.local_addr().unwrap())
        });
        // A poll that dumps TIME_WAIT sockets (every fifth) after them.
        thread::sleep(
            (tracer.ready_at() + POLL * 5 + Duration::from_millis(900))
                .saturating_duration_since(Instant::now()),
        );
        let tw_ss = ss(&ns).iter().filter(|s| s.state == "TIME-WAIT").count();
        let out = tracer.stop();
        out.assert_clean();
        let s = read_summary(dir.file("summary.json").as_path());
        let ctx = format!(
            "tcp_tw_reuse={reuse}; the 11th connect: {next:?}; ss TIME-WAIT {tw_ss}; time_wait: {:#}",
            s["time_wait"]
        );
        let warnings: Vec<&str> = s["time_wait"]["port_exhaustion"]
            .as_array()
            .map(|v| v.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(warnings.len(), 1, "one destination near exhaustion; {ctx}");
        let w = warnings[0];
        assert!(
            w.contains(&format!(
                "of 10 local ports (ip_local_port_range 40000 40009) are in TIME_WAIT towards 127.0.0.1:{PORT}"
            )),
            "{ctx}"
        );
        if reuse == "0" {
            // Ground truth: no port left.
            let e = next.as_ref().expect_err("connect with every port in TIME_WAIT");
            assert_eq!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{ctx}");
            assert!(
                w.contains("will fail with EADDRNOTAVAIL")
                    && w.contains("set net.ipv4.tcp_tw_reuse=1 (tcp_tw_reuse=0"),
                "{ctx}"
            );
        } else {
            // Ground truth: connect() took over a TIME_WAIT port.
            let local = next.as_ref().unwrap_or_else(|e| panic!("connect: {e}; {ctx}"));
            assert!((40000..=40009).contains(&local.port()), "{ctx}");
            assert!(
                w.contains("tcp_tw_reuse=1 lets connect() take over those older than 1 ms")
                    && !w.contains("will fail"),
                "{ctx}"
            );
        }
    }
}

#[test]
fn sysctls_and_backlog_limit_are_read_inside_the_namespace() {
    const PORT: u16 = 23601;
    let ns = Netns::new();
    // Unusual values, so they cannot come from the root namespace or the defaults.
    let set = [
        ("net.core.somaxconn", "1234"),
        ("net.ipv4.ip_local_port_range", "40000 40999"),
        ("net.ipv4.tcp_fin_timeout", "17"),
        ("net.ipv4.tcp_max_syn_backlog", "333"),
        ("net.ipv4.tcp_synack_retries", "3"),
    ];
    for (k, v) in set {
        sysctl_set(&ns, k, v);
    }
    let root = std::fs::read_to_string("/proc/sys/net/core/somaxconn").expect("root somaxconn");
    assert_ne!(
        root.trim(),
        "1234",
        "the root namespace's somaxconn must differ for this test"
    );
    let dir = TempDir::new("diag-sysctl");
    let tracer = start_tracer(View::Events, &ns, &dir, &[]);
    thread::sleep(FIRST_SNAPSHOT);
    let a = addr(PORT);
    let server = ns.run(move || listen_with_backlog(a, 4096));
    thread::sleep(Duration::from_millis(1200));
    let ss_l = ss_listener(&ns, PORT);
    let out = tracer.stop();
    drop(server);
    out.assert_clean();
    let s = read_summary(dir.file("summary.json").as_path());

    let sys = s["sysctls"]
        .as_object()
        .unwrap_or_else(|| panic!("no sysctls object:\n{s:#}"));
    for name in [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.tcp_abort_on_overflow",
        "net.ipv4.tcp_synack_retries",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.ip_local_port_range",
    ] {
        assert!(sys.contains_key(name), "sysctls lacks {name}: {sys:?}");
    }
    // Every value reported is the namespace's own.
    for (name, v) in sys {
        assert_eq!(
            v.as_str(),
            Some(sysctl_get(&ns, name).as_str()),
            "sysctls.{name} vs. `ip netns exec {} sysctl -n {name}`",
            ns.name()
        );
    }
    for (k, v) in set {
        assert_eq!(sys[k].as_str(), Some(v), "sysctls.{k}: {sys:?}");
    }

    // listen(fd, 4096) with somaxconn=1234: the limit is 1234.
    assert_eq!(ss_l.send_q, 1234, "ss: accept queue limit; {ss_l:?}");
    let l = listener(&s, ns.inode(), PORT);
    let ctx = format!("listener: {l:#}");
    assert_eq!(
        l["backlog_limit"].as_u64(),
        Some(1234),
        "backlog_limit; {ctx}"
    );
    assert_eq!(l["drops"].as_u64(), Some(0), "drops; {ctx}");
    assert_eq!(l["queue_peak"].as_u64(), Some(0), "queue_peak; {ctx}");
    assert_eq!(l["times_full"].as_u64(), Some(0), "times_full; {ctx}");
    assert_eq!(l["diagnosis"].as_str(), Some("ok"), "diagnosis; {ctx}");
    assert_eq!(l["pid"].as_u64(), Some(me()), "pid; {ctx}");
    assert_eq!(l["comm"].as_str(), Some(own_comm().as_str()), "comm; {ctx}");
    let lines = diagnosis_lines(&s);
    assert!(
        lines.iter().all(|x| !x.contains(&format!(":{PORT}"))),
        "a healthy listener has no diagnosis line: {lines:#?}"
    );
}

#[test]
fn fin_wait2_timeouts_are_counted() {
    const PORT: u16 = 23801;
    const K: usize = 3;
    const M: usize = 2;
    let ns = Netns::new();
    // An orphaned FIN_WAIT2 socket waits tcp_fin_timeout for the peer's FIN, then goes away.
    // 4 s: long enough that ss still sees them in FIN_WAIT2 on a loaded machine.
    sysctl_set(&ns, "net.ipv4.tcp_fin_timeout", "4");
    let dir = TempDir::new("diag-fw2");
    // A 3 s threshold: every poll walks for FIN_WAIT2 sockets, while TIME_WAIT is dumped only
    // at the first poll (and the fifteenth, 7.5 s on): FIN_WAIT2 sockets gone in between are
    // judged by looking each one up.
    let tracer = start_tracer(View::Live, &ns, &dir, &["--close-wait-threshold", "3s"]);
    thread::sleep(FIRST_SNAPSHOT);
    let a = addr(PORT);
    // K connections whose server never closes (its clients wait in FIN_WAIT2 until they time
    // out) and M whose server closes once polls have seen its client in FIN_WAIT2 (they go
    // FIN_WAIT2 -> TIME_WAIT: no timeout). Those M clients are bound to lo, as in a VRF: the
    // kernel finds them by 4-tuple only together with the interface.
    let (server, kept, closing) = ns.run(move || {
        let l = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
        let (mut kept, mut closing) = (Vec::new(), Vec::new());
        for (i, (c, mut srv, _)) in connect_pairs(&l, a, K + M).into_iter().enumerate() {
            if i >= K {
                bind_to_device(&c, "lo");
            }
            drop(c);
            if i < K {
                kept.push(srv);
            } else {
                srv.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                let mut buf = Vec::new();
                srv.read_to_end(&mut buf).expect("server read to EOF");
                closing.push(srv);
            }
        }
        (l, kept, closing)
    });
    let count = |ns: &Netns, state: &str| {
        ss(ns)
            .iter()
            .filter(|s| s.state == state && s.peer == a.to_string())
            .count()
    };
    // The clients' FINs may still be in flight (FIN_WAIT1) on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(2);
    while count(&ns, "FIN-WAIT-2") < K + M && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let fw2_at_start = count(&ns, "FIN-WAIT-2");
    thread::sleep(POLL * 2);
    drop(closing);
    // Wait (bounded) for the FIN_WAIT2 sockets to time out, then for a poll and a frame.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&ns, "FIN-WAIT-2") > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let fw2_at_end = count(&ns, "FIN-WAIT-2");
    let tw_at_end = count(&ns, "TIME-WAIT");
    thread::sleep(POLL * 2 + Duration::from_millis(600));
    let out = tracer.stop();
    drop(kept);
    drop(server);
    assert_clean_watch(&out);
    let s = read_summary(dir.file("summary.json").as_path());
    assert_eq!(
        (fw2_at_start, fw2_at_end, tw_at_end),
        (K + M, 0, M),
        "ground truth (ss): {} clients in FIN_WAIT2, {K} of them timed out, {M} in TIME_WAIT",
        K + M
    );
    // Live, before the last poll: counted from sockstat and the lookups.
    let fr = frames(watch_stdout(&out));
    let last = fr.last().expect("frames");
    let line = last
        .iter()
        .find(|l| l.starts_with("TIME_WAIT "))
        .unwrap_or_else(|| panic!("no TIME_WAIT line in the last frame:\n{}", last.join("\n")));
    let w: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        w,
        ["TIME_WAIT", &M.to_string(), "FIN_WAIT2", "timeouts", &K.to_string()],
        "the live view, before the last poll"
    );
    assert_eq!(
        s["fin_wait2_timeouts"].as_u64(),
        Some(K as u64),
        "fin_wait2_timeouts: the {M} that went on to TIME_WAIT must not count; time_wait: {:#}",
        s["time_wait"]
    );
    assert_eq!(
        s["time_wait"]["count"].as_u64(),
        Some(M as u64),
        "time_wait: {:#}",
        s["time_wait"]
    );
    let lines = diagnosis_lines(&s);
    let want = format!("{K} connections timed out in FIN_WAIT2 (net.ipv4.tcp_fin_timeout)");
    assert!(
        lines.iter().any(|l| l.starts_with(&want)),
        "the diagnosis should have a line starting with `{want}`: {lines:#?}"
    );
    assert_eq!(
        s["sysctls"]["net.ipv4.tcp_fin_timeout"].as_str(),
        Some("4"),
        "sysctls: {:#}",
        s["sysctls"]
    );
}

#[test]
fn a_growing_leak_is_flagged() {
    const PORT: u16 = 23901;
    let ns = Netns::new();
    let dir = TempDir::new("diag-growing");
    let tracer = start_tracer(View::Events, &ns, &dir, &["--close-wait-threshold", "1s"]);
    thread::sleep(FIRST_SNAPSHOT);
    let a = addr(PORT);
    // One leak; 2 s later (it has been reported), two more; stop once those are reported too.
    // The last 5 polls (~2 s) then saw 1 leak at first and 3 at the end: growing.
    let (server, first, peers1, _, t1) = make_leaks(&ns, a, 1);
    thread::sleep((t1 + Duration::from_secs(2)).saturating_duration_since(Instant::now()));
    let more = ns.run(move || {
        let mut v = Vec::new();
        let mut peers = BTreeSet::new();
        for (mut c, srv, peer) in connect_pairs(&server, a, 2) {
            c.write_all(UNREAD).expect("client write");
            drop(c);
            v.push(srv);
            peers.insert(peer);
        }
        (server, v, peers)
    });
    let (server, second, peers2) = more;
    thread::sleep(Duration::from_millis(1800));
    let out = tracer.stop();
    drop(first);
    drop(second);
    drop(server);
    out.assert_clean();
    let s = read_summary(dir.file("summary.json").as_path());

    let got: BTreeSet<SocketAddr> = leaks_on(&s, PORT).iter().map(|(p, _)| *p).collect();
    let want: BTreeSet<SocketAddr> = peers1.union(&peers2).copied().collect();
    assert_eq!(got, want, "close_wait_leaks: {:#}", s["close_wait_leaks"]);
    let by = array(&s, "close_wait_leaks_by_process");
    assert_eq!(by.len(), 1, "close_wait_leaks_by_process: {by:#?}");
    assert_eq!(by[0]["pid"].as_u64(), Some(me()), "{by:#?}");
    assert_eq!(by[0]["count"].as_u64(), Some(3), "{by:#?}");
    assert_eq!(
        by[0]["growing"].as_bool(),
        Some(true),
        "1 leak, then 3 within the last polls: growing; {by:#?}"
    );
    let lines = diagnosis_lines(&s);
    let want = format!(
        "{}[{}] holds 3 sockets in CLOSE_WAIT, and the number is growing",
        own_comm(),
        me()
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&want)),
        "the diagnosis should have a line starting with `{want}`: {lines:#?}"
    );
    // One leak line per socket, the first one before the others were even made.
    let evs: Vec<&Value> = out.events.iter().filter(|e| e.kind() == "leak").collect();
    assert_eq!(
        evs.len(),
        3,
        "leak lines:\n{}",
        describe_all(evs.iter().copied())
    );
}
