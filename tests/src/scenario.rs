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

/// A duration in microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Join a scoped thread, propagating its panic.
pub fn join<T>(h: thread::ScopedJoinHandle<'_, T>) -> T {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// What the test's clock saw of one connection made by [`held_connection`].
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub port: u16,
    /// Client: around connect() and around close().
    pub c0: Instant,
    pub c1: Instant,
    pub c2: Instant,
    pub c3: Instant,
    /// Server: read() returned EOF; around close().
    pub s_eof: Instant,
    pub s2: Instant,
    pub s3: Instant,
}

impl Held {
    /// Bounds of the server socket's ESTABLISHED dwell: it began inside connect() (the final
    /// ACK) and ended when the client's FIN arrived (inside the client's close(), before the
    /// server's read() saw EOF).
    pub fn established(&self) -> (f64, f64) {
        let fin_by = self.c3.min(self.s_eof);
        (us(self.c2 - self.c1), us(fin_by - self.c0))
    }

    /// Bounds of its CLOSE_WAIT dwell: from the FIN to the server's close().
    pub fn close_wait(&self) -> (f64, f64) {
        let fin_by = self.c3.min(self.s_eof);
        (us(self.s2 - fin_by), us(self.s3 - self.c2))
    }

    /// Bounds of the client socket's ESTABLISHED dwell: connect() to close().
    pub fn client_established(&self) -> (f64, f64) {
        (us(self.c2 - self.c1), us(self.c3 - self.c0))
    }
}

/// Inside the calling thread's namespace, on 127.0.0.1:`port`: a client connects, waits
/// `hold_est` and closes; the server accepts, reads EOF, waits `hold_cw` and closes.
pub fn held_connection(port: u16, hold_est: Duration, hold_cw: Duration) -> Held {
    let a = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(a).unwrap_or_else(|e| panic!("bind {a}: {e}"));
    let h = thread::scope(|s| {
        let l = &listener;
        let server = thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn_scoped(s, move || {
                let (mut c, _) = accept_timeout(l, STEP_TIMEOUT);
                c.set_read_timeout(Some(STEP_TIMEOUT)).unwrap();
                let mut buf = [0u8; 16];
                let n = c.read(&mut buf).expect("server read");
                let s_eof = Instant::now();
                assert_eq!(n, 0, "the client sends nothing");
                thread::sleep(hold_cw);
                let s2 = Instant::now();
                drop(c);
                (s_eof, s2, Instant::now())
            })
            .unwrap();
        let client = thread::Builder::new()
            .name(CLIENT_THREAD.into())
            .spawn_scoped(s, move || {
                let c0 = Instant::now();
                let c = TcpStream::connect_timeout(&a, STEP_TIMEOUT)
                    .unwrap_or_else(|e| panic!("connect {a}: {e}"));
                let c1 = Instant::now();
                thread::sleep(hold_est);
                let c2 = Instant::now();
                drop(c);
                (c0, c1, c2, Instant::now())
            })
            .unwrap();
        let (c0, c1, c2, c3) = join(client);
        let (s_eof, s2, s3) = join(server);
        Held {
            port,
            c0,
            c1,
            c2,
            c3,
            s_eof,
            s2,
            s3,
        }
    });
    drop(listener);
    h
}
