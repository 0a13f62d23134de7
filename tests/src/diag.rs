//! Helpers for the diagnosis tests: sockets std cannot make (a listen backlog of our choice,
//! non-blocking connects), `ss` and `sysctl` inside a namespace as ground truth, and lookups in
//! the JSON summary's diagnosis sections.
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};

use serde_json::Value;

use crate::netns::Netns;

fn check(rc: libc::c_int, what: &str) {
    assert!(
        rc >= 0,
        "{what} failed: {}",
        std::io::Error::last_os_error()
    );
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => panic!("IPv4 only: {a}"),
    }
}

/// A TCP socket (IPv4), owned.
fn tcp_socket(flags: libc::c_int) -> OwnedFd {
    // SAFETY: plain socket(2); the fd is owned by the OwnedFd from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | flags, 0) };
    check(fd, "socket");
    // SAFETY: a fresh fd nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A listener on `addr` with exactly `listen(fd, backlog)` (std's `TcpListener::bind` always
/// uses 128), in the calling thread's namespace. SO_REUSEADDR is set, as std does.
pub fn listen_with_backlog(addr: SocketAddr, backlog: i32) -> TcpListener {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let fd = tcp_socket(libc::SOCK_CLOEXEC);
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt(SO_REUSEADDR)");
    let sa = sockaddr_in(v4(addr));
    // SAFETY: a valid fd and sockaddr_in of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(rc, &format!("bind {addr}"));
    // SAFETY: a valid, bound fd.
    let rc = unsafe { libc::listen(fd.as_raw_fd(), backlog) };
    check(rc, &format!("listen({addr}, {backlog})"));
    // SAFETY: the fd is a listening TCP socket, handed over whole.
    unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// Start `n` non-blocking connects to `addr` from the calling thread's namespace and return the
/// sockets at once (most still in SYN_SENT when the listener's queue is full).
pub fn connect_nonblocking(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let sa = sockaddr_in(v4(addr));
    (0..n)
        .map(|_| {
            let fd = tcp_socket(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
            // SAFETY: a valid fd and sockaddr_in of the given size.
            let rc = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::EINPROGRESS),
                    "non-blocking connect to {addr}: {e}"
                );
            }
            // SAFETY: a TCP socket fd, handed over whole.
            unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
        })
        .collect()
}

/// SO_LINGER {on, 0}: close() then aborts with a RST instead of a FIN (and a socket still in
/// SYN_SENT just goes away), so a closed client can cause no further SYN or FIN.
pub fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd and a linger struct of the right size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    check(rc, "setsockopt(SO_LINGER)");
}

/// This process's comm (what /proc/PID/comm of the thread group leader says), as the tracer
/// reports a socket owner's.
pub fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read /proc/self/comm")
        .trim_end()
        .to_string()
}

/// `sysctl -n NAME` inside the namespace, whitespace collapsed to single spaces.
pub fn sysctl_get(ns: &Netns, name: &str) -> String {
    let out = ns.exec(&["sysctl", "-n", name]);
    assert!(
        out.status.success(),
        "sysctl -n {name} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sysctl -w NAME=VALUE` inside the namespace; checks it took.
pub fn sysctl_set(ns: &Netns, name: &str, value: &str) {
    let out = ns.exec(&["sysctl", "-w", &format!("{name}={value}")]);
    assert!(
        out.status.success(),
        "sysctl -w {name}={value} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sysctl_get(ns, name);
    let want = value.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(got, want, "{name} in {} after sysctl -w", ns.name());
}

/// One socket line of `ss -tanm` (state, queues, ends, and the `skmem` drop counter).
#[derive(Debug, Clone, PartialEq)]
pub struct SsSocket {
    pub state: String,
    pub recv_q: u64,
    pub send_q: u64,
    pub local: SocketAddr,
    pub peer: String,
    /// `d<N>` of `skmem:(...)`.
    pub drops: Option<u64>,
}

/// `ss -tanm` inside the namespace: every TCP socket, with memory info.
pub fn ss(ns: &Netns) -> Vec<SsSocket> {
    let out = ns.exec(&["ss", "-tanm"]);
    assert!(
        out.status.success(),
        "ss -tanm in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_ss(&text)
}

/// The `ss -tanm` LISTEN line of `port`.
pub fn ss_listener(ns: &Netns, port: u16) -> SsSocket {
    let all = ss(ns);
    let v: Vec<_> = all
        .iter()
        .filter(|s| s.state == "LISTEN" && s.local.port() == port)
        .cloned()
        .collect();
    assert_eq!(
        v.len(),
        1,
        "want one LISTEN socket on {port} in ss: {all:#?}"
    );
    v[0].clone()
}

/// Waits (up to 3 s) until every TCP socket in `ns` is listening or in TIME_WAIT: the last
/// closes of a test's connections land in softirq after its threads return, later on a loaded
/// machine; a tracer stopped before them would miss them.
pub fn settle(ns: &Netns) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while ss(ns)
        .iter()
        .any(|s| s.state != "LISTEN" && s.state != "TIME-WAIT")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Parses `ss -tanm`: a header, then per socket a line `STATE RECVQ SENDQ LOCAL PEER` and, with
/// `-m`, an indented `skmem:(...)` line.
pub fn parse_ss(text: &str) -> Vec<SsSocket> {
    let mut v: Vec<SsSocket> = Vec::new();
    for l in text.lines().skip(1) {
        let t = l.trim();
        if let Some(mem) = t.strip_prefix("skmem:(") {
            let d = mem
                .trim_end_matches(')')
                .split(',')
                .find_map(|f| f.strip_prefix('d').and_then(|n| n.parse().ok()));
            if let Some(last) = v.last_mut() {
                last.drops = d;
            }
            continue;
        }
        let w: Vec<&str> = t.split_whitespace().collect();
        if w.len() < 5 {
            continue;
        }
        let local = without_scope(w[3]);
        let (Ok(recv_q), Ok(send_q), Ok(local)) = (w[1].parse(), w[2].parse(), local.parse()) else {
            continue;
        };
        v.push(SsSocket {
            state: w[0].to_string(),
            recv_q,
            send_q,
            local,
            peer: without_scope(w[4]),
            drops: None,
        });
    }
    v
}

/// An ss address without the interface a bound socket shows (`127.0.0.1%lo:80`).
fn without_scope(a: &str) -> String {
    match a.find('%') {
        Some(i) => {
            let end = a[i..].find([':', ']']).map_or(a.len(), |j| i + j);
            format!("{}{}", &a[..i], &a[end..])
        }
        None => a.to_string(),
    }
}

/// The entry of the summary's `listeners` for `port` in namespace `netns`; panics (showing the
/// listeners) unless there is exactly one.
pub fn listener(summary: &Value, netns: u64, port: u16) -> &Value {
    let all = summary
        .get("listeners")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no `listeners` array in the summary:\n{summary:#}"));
    let found: Vec<&Value> = all
        .iter()
        .filter(|l| {
            l.get("port").and_then(Value::as_u64) == Some(port as u64)
                && l.get("netns").and_then(Value::as_u64) == Some(netns)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "want exactly one listener for port {port} in netns {netns}; listeners: {:#}",
        summary["listeners"]
    );
    found[0]
}

/// The array at `key` of the summary; panics if missing.
pub fn array<'a>(summary: &'a Value, key: &str) -> &'a [Value] {
    summary
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no `{key}` array in the summary:\n{summary:#}"))
}

/// The summary's `diagnosis` sentences.
pub fn diagnosis_lines(summary: &Value) -> Vec<&str> {
    array(summary, "diagnosis")
        .iter()
        .map(|d| {
            d.as_str()
                .unwrap_or_else(|| panic!("diagnosis entry {d} is not a string"))
        })
        .collect()
}

/// `kernel_counters.NAME` of the summary (a delta); panics if missing.
pub fn kernel_counter(summary: &Value, name: &str) -> i64 {
    summary
        .pointer(&format!("/kernel_counters/{name}"))
        .and_then(Value::as_i64)
        .unwrap_or_else(|| {
            panic!(
                "no integer kernel_counters.{name} in the summary: {:#}",
                summary["kernel_counters"]
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss() {
        let text = "State  Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n\
LISTEN 2      1          127.0.0.1:23101      0.0.0.0:*\n\
\t skmem:(r0,rb131072,t0,tb16384,f0,w0,o0,bl0,d57)\n\
CLOSE-WAIT 6  0          127.0.0.1:23201    127.0.0.1:48492\n\
\t skmem:(r837,rb131072,t0,tb3939840,f3259,w0,o0,bl0,d0)\n\
TIME-WAIT 0 0 127.0.0.1:40000 127.0.0.1:23401\n\
FIN-WAIT-2 0 0 127.0.0.1%lo:38860 127.0.0.1:5555\n";
        let v = parse_ss(text);
        assert_eq!(v.len(), 4);
        assert_eq!(v[3].local, "127.0.0.1:38860".parse().unwrap(), "bound to lo");
        assert_eq!(without_scope("[fe80::1%eth0]:22"), "[fe80::1]:22");
        assert_eq!(v[0].state, "LISTEN");
        assert_eq!((v[0].recv_q, v[0].send_q, v[0].drops), (2, 1, Some(57)));
        assert_eq!(v[1].recv_q, 6);
        assert_eq!(v[1].drops, Some(0));
        assert_eq!(v[2].local.port(), 40000);
        assert_eq!(v[2].drops, None);
    }
}
