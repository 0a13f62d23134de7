//! Connections made in-process, with the client's own timing as ground truth.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{Netns, gettid, mono_ns};

/// The client thread's name (so its comm).
pub const CLIENT_THREAD: &str = "tt-client";
pub const SERVER_THREAD: &str = "tt-server";
pub const PAYLOAD: &[u8] = b"hello, tcptrace";
/// No step of a scenario may block longer than this.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// Accept one connection, polling; panics after `limit`.
pub fn accept_timeout(l: &TcpListener, limit: Duration) -> (TcpStream, SocketAddr) {
    l.set_nonblocking(true).expect("set_nonblocking");
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).expect("set_nonblocking(false)");
                return (s, a);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < limit,
                    "no connection to accept within {limit:?}"
                );
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// What the client and server saw.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub server_addr: SocketAddr,
    /// The client's local address (as its socket reports it).
    pub client_local: SocketAddr,
    /// The client's address as the server's accept() reported it.
    pub server_peer: SocketAddr,
    pub client_tid: i32,
    pub connect_start: Instant,
    pub connect_end: Instant,
    pub close_start: Instant,
    pub close_end: Instant,
    /// CLOCK_MONOTONIC just before and just after connect() (what ts_ns counts).
    pub connect_start_ns: u64,
    pub connect_end_ns: u64,
}

impl Exchange {
    /// How long the client's connect() took.
    pub fn connect_time(&self) -> Duration {
        self.connect_end - self.connect_start
    }
}

/// Inside `ns`: listen on `addr`; a client thread ([`CLIENT_THREAD`]) connects, writes
/// [`PAYLOAD`], waits `hold`, and closes first; the server thread accepts, reads to EOF, checks
/// the payload and closes; then the listener is closed. Everything is finished when it returns.
pub fn exchange(ns: &Netns, addr: SocketAddr, hold: Duration) -> Exchange {
    ns.run(move || {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let ex = thread::scope(|s| {
            let l = &listener;
            let server = thread::Builder::new()
                .name(SERVER_THREAD.into())
                .spawn_scoped(s, move || {
                    let (mut c, peer) = accept_timeout(l, STEP_TIMEOUT);
                    c.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                    let mut buf = Vec::new();
                    c.read_to_end(&mut buf).expect("server read to EOF");
                    assert_eq!(buf, PAYLOAD, "server received something else");
                    drop(c);
                    peer
                })
                .unwrap();
            let client = thread::Builder::new()
                .name(CLIENT_THREAD.into())
                .spawn_scoped(s, move || {
                    let tid = gettid();
                    let n0 = mono_ns();
                    let t0 = Instant::now();
                    let mut c = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
                        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
                    let t1 = Instant::now();
                    let n1 = mono_ns();
                    c.write_all(PAYLOAD).expect("client write");
                    let local = c.local_addr().unwrap();
                    thread::sleep(hold);
                    let t2 = Instant::now();
                    drop(c);
                    let t3 = Instant::now();
                    (tid, local, t0, t1, t2, t3, n0, n1)
                })
                .unwrap();
            let (
                client_tid,
                client_local,
                connect_start,
                connect_end,
                close_start,
                close_end,
                connect_start_ns,
                connect_end_ns,
            ) = match client.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            };
            let server_peer = match server.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            };
            Exchange {
                server_addr: addr,
                client_local,
                server_peer,
                client_tid,
                connect_start,
                connect_end,
                close_start,
                close_end,
                connect_start_ns,
                connect_end_ns,
            }
        });
        drop(listener);
        ex
    })
}
