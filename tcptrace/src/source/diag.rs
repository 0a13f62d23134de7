//! TCP sockets as netlink sock_diag (INET_DIAG) reports them: what exists right now, including
//! what the tracepoints never show (TIME_WAIT mini-sockets, sockets older than tcptrace, accept
//! queue lengths and listener drop counters). Answers for the calling thread's namespace.
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, anyhow, bail};
use std::sync::{Mutex, OnceLock};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, Parseable};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetResponse, StateFlags, nlas::Nla};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};
use tcptrace_common::agg::SockTimes;

use crate::event::TcpState;

/// One socket from a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u32,
    pub uid: u32,
    /// Bytes not yet read by the application (not counting a received FIN); for LISTEN: the
    /// accept queue length.
    pub recv_q: u32,
    /// Bytes not yet acknowledged by the peer; for LISTEN: the accept queue limit.
    pub send_q: u32,
    /// The socket's drop counter (SKMEMINFO), when asked for.
    pub drops: Option<u32>,
    /// When the socket entered its current state (CLOCK_MONOTONIC ns), from the table the
    /// kernel side keeps in aggregation mode: exact ages without any event. CLOSE_WAIT only.
    pub since_ns: Option<u64>,
    /// The interface it is bound to (SO_BINDTODEVICE, a VRF, an IPv6 link-local scope), 0 if
    /// none: the kernel finds a bound socket by its 4-tuple only with it.
    pub bound_if: u32,
}

/// Aggregation mode: the kernel's table of socket state-entry times, a slot per socket picked
/// by the low bits of its cookie.
pub struct SockTimesTable {
    pub map: aya::maps::Array<aya::maps::MapData, SockTimes>,
    pub mask: u32,
}
static SOCK_TIMES: OnceLock<Mutex<SockTimesTable>> = OnceLock::new();

/// Later dumps look CLOSE_WAIT sockets up in the kernel's table of state-entry times (an open
/// map fd: keeps working after --user drops every capability).
pub fn include_sock_times(table: SockTimesTable) {
    let _ = SOCK_TIMES.set(Mutex::new(table));
}

/// When the socket with this cookie entered `state`, if the kernel side saw it happen.
fn since_ns(cookie: [u8; 8], state: TcpState) -> Option<u64> {
    let table = SOCK_TIMES.get()?.lock().ok()?;
    // sock_diag's cookie is two host-order u32 halves, low first.
    let lo = u32::from_ne_bytes(cookie[..4].try_into().ok()?);
    let hi = u32::from_ne_bytes(cookie[4..].try_into().ok()?);
    let cookie = u64::from(hi) << 32 | u64::from(lo);
    // The slots the kernel side may have used for it.
    (0..tcptrace_common::agg::SOCK_PROBES).find_map(|i| {
        let t = table.map.get(&(lo.wrapping_add(i) & table.mask), 0).ok()?;
        (t.cookie == cookie && t.since_ns != 0 && TcpState::from_kernel(t.state) == Some(state))
            .then_some(t.since_ns)
    })
}

/// Which sockets a dump returns.
pub fn states(list: &[TcpState]) -> StateFlags {
    let mut f = StateFlags::empty();
    for s in list {
        f |= StateFlags::from_bits_truncate(1 << (*s as u32));
    }
    f
}

/// `TCPDIAG_GETSOCK`: the original inet_diag request. Unlike `SOCK_DIAG_BY_FAMILY` it takes
/// `AF_UNSPEC`, so one dump (one walk of the kernel's established hash) returns both families.
const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req`: family, src_len, dst_len, ext, a 48-byte socket id, states, dbs.
const INET_DIAG_REQ_LEN: usize = 60;
const NLMSG_HDR_LEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// Dumps TCP sockets of both families in the given states.
///
/// One request for both families: the kernel's established hash is shared by every namespace,
/// so each dump walks all of it (every namespace's sockets, TIME_WAIT included) whatever it
/// returns; asking per family walked it twice.
pub fn dump(wanted: StateFlags, meminfo: bool) -> anyhow::Result<Vec<DiagSocket>> {
    let socket = open()?;
    let ext = if meminfo {
        ExtensionFlags::SKMEMINFO
    } else {
        ExtensionFlags::empty()
    };
    socket
        .send(&compat_request(wanted.bits(), ext.bits()), 0)
        .context("sending the sock_diag request")?;
    let mut out = Vec::new();
    let mut rx = Vec::with_capacity(1 << 16);
    loop {
        rx.clear();
        let n = socket
            .recv(&mut rx, 0)
            .context("reading the sock_diag answer")?;
        if n == 0 {
            bail!("sock_diag: connection closed before the dump ended");
        }
        if read_answer(&rx, &mut out)? {
            return Ok(out);
        }
    }
}

fn open() -> anyhow::Result<Socket> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    Ok(socket)
}

/// A connection as an exact lookup names it: local end, remote end, bound interface.
pub type Conn = (SocketAddr, SocketAddr, u32);

/// Of these connections, those in FIN_WAIT2 or TIME_WAIT now, each looked up by its 4-tuple
/// (and interface): a hash lookup in the kernel, where a dump walks every namespace's sockets.
pub fn closing_among(conns: &[Conn]) -> anyhow::Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    if conns.is_empty() {
        return Ok(out);
    }
    let socket = open()?;
    let mut rx = Vec::with_capacity(4096);
    for &(local, remote, bound_if) in conns {
        socket
            .send(&exact_request(local, remote, bound_if), 0)
            .context("sending a sock_diag lookup")?;
        rx.clear();
        socket
            .recv(&mut rx, 0)
            .context("reading a sock_diag lookup's answer")?;
        let mut found = Vec::new();
        match read_answer(&rx, &mut found) {
            Ok(_) => {}
            // Gone: not in TIME_WAIT.
            Err(e) if e.downcast_ref::<std::io::Error>().and_then(|e| e.raw_os_error())
                == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        // The kernel falls back to a listener on the local port: keep only the connection.
        out.extend(found.into_iter().filter(|d| {
            matches!(d.state, TcpState::TimeWait | TcpState::FinWait2)
                && d.local == local
                && d.remote == remote
        }));
    }
    Ok(out)
}

/// The dump request: a netlink header and a `struct inet_diag_req` for `AF_UNSPEC`.
fn compat_request(states: u32, ext: u8) -> Vec<u8> {
    let mut b = request(NLM_F_REQUEST | NLM_F_DUMP);
    let req = &mut b[NLMSG_HDR_LEN..];
    req[0] = 0; // AF_UNSPEC
    req[3] = ext;
    req[52..56].copy_from_slice(&states.to_ne_bytes());
    b
}

/// A request for the one socket with this 4-tuple, bound to `bound_if` (not a dump).
fn exact_request(local: SocketAddr, remote: SocketAddr, bound_if: u32) -> Vec<u8> {
    let mut b = request(NLM_F_REQUEST);
    let req = &mut b[NLMSG_HDR_LEN..];
    let (family, src, dst) = match (local.ip(), remote.ip()) {
        (IpAddr::V4(l), IpAddr::V4(r)) => (libc::AF_INET, l.octets().to_vec(), r.octets().to_vec()),
        (l, r) => (
            libc::AF_INET6,
            to_v6(l).octets().to_vec(),
            to_v6(r).octets().to_vec(),
        ),
    };
    req[0] = family as u8;
    req[4..6].copy_from_slice(&local.port().to_be_bytes());
    req[6..8].copy_from_slice(&remote.port().to_be_bytes());
    req[8..8 + src.len()].copy_from_slice(&src);
    req[24..24 + dst.len()].copy_from_slice(&dst);
    req[40..44].copy_from_slice(&bound_if.to_ne_bytes());
    req[52..56].copy_from_slice(&u32::MAX.to_ne_bytes());
    b
}

fn to_v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// A netlink header and a zeroed `struct inet_diag_req` whose socket id has no cookie.
fn request(flags: u16) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + INET_DIAG_REQ_LEN;
    let mut b = vec![0u8; len];
    let mut hdr = NetlinkBuffer::new(&mut b[..]);
    hdr.set_length(len as u32);
    hdr.set_message_type(TCPDIAG_GETSOCK);
    hdr.set_flags(flags);
    // The socket id's cookie: INET_DIAG_NOCOOKIE.
    b[NLMSG_HDR_LEN + 44..NLMSG_HDR_LEN + 52].fill(0xff);
    b
}

/// Adds the sockets in one read of the answer to `out`; true once the dump is done.
fn read_answer(rx: &[u8], out: &mut Vec<DiagSocket>) -> anyhow::Result<bool> {
    let mut offset = 0;
    while offset + NLMSG_HDR_LEN <= rx.len() {
        let msg = NetlinkBuffer::new_checked(&rx[offset..])
            .map_err(|e| anyhow!("sock_diag: undecodable answer: {e}"))?;
        let len = msg.length() as usize;
        match msg.message_type() {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = msg
                    .payload()
                    .get(..4)
                    .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
                return Err(anyhow::Error::new(std::io::Error::from_raw_os_error(-code))
                    .context("sock_diag: the kernel refused the request"));
            }
            _ => {
                let r = InetResponse::parse(msg.payload())
                    .map_err(|e| anyhow!("sock_diag: undecodable socket: {e}"))?;
                if let Some(d) = diag_socket(&r) {
                    out.push(d);
                }
            }
        }
        // Messages are 4-byte aligned.
        let step = len.next_multiple_of(4);
        if step == 0 {
            break;
        }
        offset += step;
    }
    Ok(false)
}

fn diag_socket(r: &InetResponse) -> Option<DiagSocket> {
    let h = &r.header;
    let state = TcpState::from_kernel(h.state)?;
    let drops = r.nlas.iter().find_map(|n| match n {
        Nla::MemInfo(m) => Some(m.drops),
        _ => None,
    });
    // Only leak ages need it: one map lookup per CLOSE_WAIT socket.
    let since_ns = if state == TcpState::CloseWait {
        since_ns(h.socket_id.cookie, state)
    } else {
        None
    };
    // The kernel's receive queue is rcv_nxt - copied_seq, which counts the peer's FIN once it
    // has arrived: report unread bytes only.
    let fin_received = matches!(
        state,
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
    );
    let recv_q = if fin_received {
        h.recv_queue.saturating_sub(1)
    } else {
        h.recv_queue
    };
    Some(DiagSocket {
        state,
        local: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
        remote: SocketAddr::new(
            h.socket_id.destination_address,
            h.socket_id.destination_port,
        ),
        inode: h.inode,
        uid: h.uid,
        recv_q,
        send_q: h.send_queue,
        drops,
        since_ns,
        bound_if: h.socket_id.interface_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn one_dump_returns_both_families() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").expect("an IPv6 loopback address");
        let found = dump(states(&[TcpState::Listen]), false).unwrap();
        for l in [&v4, &v6] {
            let a = l.local_addr().unwrap();
            assert!(
                found.iter().any(|s| s.local == a && s.drops.is_none()),
                "{a} missing from {found:?}"
            );
        }
    }

    #[test]
    fn sees_our_listener_with_its_queue_limit() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = dump(states(&[TcpState::Listen]), true).unwrap();
        let me = found
            .iter()
            .find(|s| s.local.port() == port)
            .expect("our listener is in the dump");
        assert_eq!(me.state, TcpState::Listen);
        assert!(me.send_q > 0, "accept queue limit is reported");
        assert!(me.drops.is_some(), "SKMEMINFO drop counter is reported");
        assert!(me.inode > 0);
    }

    #[test]
    fn finds_a_time_wait_socket_by_its_4_tuple() {
        use std::io::Read;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let c = std::net::TcpStream::connect(a).unwrap();
        let local = c.local_addr().unwrap();
        let (mut srv, _) = l.accept().unwrap();
        // The client closes first: its side ends in TIME_WAIT once the server closes too.
        drop(c);
        srv.read_to_end(&mut Vec::new()).unwrap();
        drop(srv);
        let unused: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let found = loop {
            let found = closing_among(&[(unused, a, 0), (local, a, 0), (a, local, 0)]).unwrap();
            let settled = found.iter().all(|d| d.state == TcpState::TimeWait);
            if (!found.is_empty() && settled) || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].state, found[0].local, found[0].remote), (TcpState::TimeWait, local, a));
        // The listener's own 4-tuple lookup falls back to the listener: not TIME_WAIT.
        assert!(closing_among(&[(a, unused, 0)]).unwrap().is_empty());
    }
}
