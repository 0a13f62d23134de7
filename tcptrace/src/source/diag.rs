//! TCP sockets as netlink sock_diag (INET_DIAG) reports them: what exists right now, including
//! what the tracepoints never show (TIME_WAIT mini-sockets, sockets older than tcptrace, accept
//! queue lengths and listener drop counters). Answers for the calling thread's namespace.
use std::net::SocketAddr;

use anyhow::{Context as _, anyhow, bail};
use std::sync::{Mutex, OnceLock};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags, nlas::Nla},
};
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

/// Dumps TCP sockets of both families in the given states.
pub fn dump(wanted: StateFlags, meminfo: bool) -> anyhow::Result<Vec<DiagSocket>> {
    let mut socket =
        Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    socket.bind_auto().context("binding the sock_diag socket")?;
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .context("connecting the sock_diag socket")?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_family(&mut socket, family, wanted.clone(), meminfo, &mut out)?;
    }
    Ok(out)
}

fn dump_family(
    socket: &mut Socket,
    family: u8,
    wanted: StateFlags,
    meminfo: bool,
    out: &mut Vec<DiagSocket>,
) -> anyhow::Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: if meminfo {
                ExtensionFlags::SKMEMINFO
            } else {
                ExtensionFlags::empty()
            },
            states: wanted,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf[..]);
    socket
        .send(&buf, 0)
        .context("sending the sock_diag request")?;

    let mut rx = Vec::with_capacity(1 << 16);
    loop {
        rx.clear();
        let n = socket
            .recv(&mut rx, 0)
            .context("reading the sock_diag answer")?;
        if n == 0 {
            bail!("sock_diag: connection closed before the dump ended");
        }
        let mut offset = 0;
        while offset < rx.len() {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[offset..])
                .map_err(|e| anyhow!("sock_diag: undecodable answer: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => bail!("sock_diag: kernel error {e:?}"),
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let Some(state) = TcpState::from_kernel(h.state) else {
                        continue;
                    };
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
                    // The kernel's receive queue is rcv_nxt - copied_seq, which counts the peer's
                    // FIN once it has arrived: report unread bytes only.
                    let fin_received = matches!(
                        state,
                        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
                    );
                    let recv_q = if fin_received {
                        h.recv_queue.saturating_sub(1)
                    } else {
                        h.recv_queue
                    };
                    out.push(DiagSocket {
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
                    });
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

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
}
