//! The one typed event stream every source produces and every consumer reads.
//!
//! Kernel records ([`RawEvent`]) are decoded here, once. A record that does not decode (unknown
//! kind, state or family) is an error the caller counts and shows: nothing is dropped silently.
use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tcptrace_common::{AF_INET, AF_INET6, RawEvent, kind};

/// TCP states, numbered and named as the kernel does (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    pub fn from_kernel(v: u8) -> Option<TcpState> {
        TcpState::ALL.get((v as usize).wrapping_sub(1)).copied()
    }

    /// The kernel's name without its `TCP_` prefix, as `ss` prints it.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    pub fn from_name(s: &str) -> Option<TcpState> {
        TcpState::ALL.into_iter().find(|st| st.name() == s)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `sock/inet_sock_set_state`.
    State { old: TcpState, new: TcpState },
    /// `tcp/tcp_retransmit_skb`, in the socket's state at the time.
    Retransmit { state: Option<TcpState> },
    /// `tcp/tcp_retransmit_synack`: the socket is the listener; `req` the request socket.
    RetransmitSynack { req: u64 },
    /// `tcp/tcp_send_reset`; `state` is `None` when no socket matched (e.g. a closed port).
    ResetSent {
        state: Option<TcpState>,
        reason: u32,
    },
    /// `tcp/tcp_receive_reset`.
    ResetReceived { state: Option<TcpState> },
    /// sock_ops: a SYN arrived at a listener (request socket created). `cookie` is the netns
    /// cookie, which pairs it with the later [`EventKind::PassiveEstablished`]; the listener's
    /// accept queue and SYN queue lengths at that moment.
    SynReceived {
        cookie: u64,
        accept_queue: u16,
        syn_queue: u16,
    },
    /// sock_ops: an accepted socket became ESTABLISHED.
    PassiveEstablished { cookie: u64 },
    /// tp_btf fallback: a new passive socket's handshake as the kernel noted it (its first
    /// SYN-ACK's round trip, or the time since that SYN-ACK when it was retransmitted), and how
    /// many SYN-ACKs were retransmitted.
    PassiveRtt {
        rtt_us: u32,
        synack_retransmits: u32,
    },
}

impl EventKind {
    /// Stable short name used in JSON (`kind`) and in recordings.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::State { .. } => "state",
            EventKind::Retransmit { .. } => "retransmit",
            EventKind::RetransmitSynack { .. } => "retransmit_synack",
            EventKind::ResetSent { .. } => "reset_sent",
            EventKind::ResetReceived { .. } => "reset_received",
            EventKind::SynReceived { .. } => "syn_received",
            EventKind::PassiveEstablished { .. } => "passive_established",
            EventKind::PassiveRtt { .. } => "passive_rtt",
        }
    }

    /// The state an event happened in (the old state for a transition).
    pub fn in_state(&self) -> Option<TcpState> {
        match *self {
            EventKind::State { old, .. } => Some(old),
            EventKind::Retransmit { state }
            | EventKind::ResetSent { state, .. }
            | EventKind::ResetReceived { state } => state,
            EventKind::RetransmitSynack { .. } | EventKind::SynReceived { .. } => {
                Some(TcpState::NewSynRecv)
            }
            EventKind::PassiveEstablished { .. } | EventKind::PassiveRtt { .. } => {
                Some(TcpState::SynRecv)
            }
        }
    }
}

/// `comm` of a task: up to 15 bytes, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; 16]);

impl Comm {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        String::from_utf8_lossy(&self.0[..end])
    }

    /// The name's bytes when they can go into JSON as they are (printable ASCII, so UTF-8 too;
    /// no `"` or `\\`), as nearly every process name can: the fast path of `events`.
    pub fn as_plain_json(&self) -> Option<&[u8]> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        let b = &self.0[..end];
        b.iter()
            .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
            .then_some(b)
    }

    /// The first 15 bytes of `b` (the kernel's TASK_COMM_LEN, NUL included).
    pub fn from_bytes(b: &[u8]) -> Comm {
        let mut c = [0u8; 16];
        let n = b.len().min(15);
        c[..n].copy_from_slice(&b[..n]);
        Comm(c)
    }

    pub fn from_str_lossy(s: &str) -> Comm {
        Comm::from_bytes(s.as_bytes())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// One TCP event, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOSE_MONOTONIC nanoseconds (the kernel's clock; wall time is derived by the sink).
    pub ts_ns: u64,
    /// Kernel address of the socket; the listener for `RetransmitSynack`; 0 if none.
    pub skaddr: u64,
    /// pid (thread-group id) and thread id of the task on the CPU, and its comm. For transitions
    /// driven by incoming packets this is whoever ran the softirq, not the socket's owner.
    pub pid: u32,
    pub tid: u32,
    pub comm: Comm,
    /// Network namespace inode (0 = unknown).
    pub netns: u32,
    /// This host's end.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub kind: EventKind,
    /// Events were dropped just before this one (on its CPU): no duration across it.
    pub gap: bool,
}

impl Event {
    pub fn is_ipv6(&self) -> bool {
        self.local.is_ipv6()
    }
}

/// Why a record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    ShortRecord(usize),
    UnknownKind(u8),
    UnknownState(u8),
    UnknownFamily(u8),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::ShortRecord(n) => write!(f, "record of {n} bytes is too short"),
            DecodeError::UnknownKind(k) => write!(f, "unknown event kind {k}"),
            DecodeError::UnknownState(s) => write!(f, "unknown TCP state {s}"),
            DecodeError::UnknownFamily(a) => write!(f, "unknown address family {a}"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn addr(family: u8, bytes: &[u8; 16], port: u16) -> Result<SocketAddr, DecodeError> {
    let ip = match family as u16 {
        AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
        _ => return Err(DecodeError::UnknownFamily(family)),
    };
    Ok(SocketAddr::new(ip, port))
}

/// States 0 (unknown) map to `None`; anything else must be a kernel state.
fn opt_state(v: u8) -> Result<Option<TcpState>, DecodeError> {
    if v == 0 {
        return Ok(None);
    }
    TcpState::from_kernel(v)
        .map(Some)
        .ok_or(DecodeError::UnknownState(v))
}

fn state(v: u8) -> Result<TcpState, DecodeError> {
    TcpState::from_kernel(v).ok_or(DecodeError::UnknownState(v))
}

#[cfg(test)]
impl Event {
    /// For tests: socket `skaddr` going `old` -> `new` at `ts_ns`, 127.0.0.1:5000 to
    /// 127.0.0.1:80, pid 1, namespace 1.
    pub fn test_state(ts_ns: u64, skaddr: u64, old: TcpState, new: TcpState) -> Event {
        Event {
            ts_ns,
            skaddr,
            pid: 1,
            tid: 1,
            comm: Comm::default(),
            netns: 1,
            local: "127.0.0.1:5000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            kind: EventKind::State { old, new },
            gap: false,
        }
    }
}

impl TryFrom<&RawEvent> for Event {
    type Error = DecodeError;

    fn try_from(r: &RawEvent) -> Result<Self, Self::Error> {
        let kind = match r.kind {
            kind::STATE => EventKind::State {
                old: state(r.oldstate)?,
                new: state(r.newstate)?,
            },
            kind::RETRANSMIT => EventKind::Retransmit {
                state: opt_state(r.newstate)?,
            },
            kind::RETRANSMIT_SYNACK => EventKind::RetransmitSynack { req: r.aux },
            kind::RESET_SENT => EventKind::ResetSent {
                state: opt_state(r.newstate)?,
                reason: r.aux32,
            },
            kind::RESET_RECEIVED => EventKind::ResetReceived {
                state: opt_state(r.newstate)?,
            },
            kind::SYN_RECEIVED => EventKind::SynReceived {
                cookie: r.aux,
                accept_queue: (r.aux32 >> 16) as u16,
                syn_queue: r.aux32 as u16,
            },
            kind::PASSIVE_ESTABLISHED => EventKind::PassiveEstablished { cookie: r.aux },
            kind::PASSIVE_RTT => EventKind::PassiveRtt {
                rtt_us: r.aux32,
                synack_retransmits: r.aux as u32,
            },
            k => return Err(DecodeError::UnknownKind(k)),
        };
        let gap = r.family & tcptrace_common::GAP_BIT != 0;
        let family = r.family & !tcptrace_common::GAP_BIT;
        // A reset sent without a socket may carry no address at all (family 0).
        let (local, remote) = if family == 0 && matches!(kind, EventKind::ResetSent { .. }) {
            let unspecified = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
            (unspecified, unspecified)
        } else {
            (
                addr(family, &r.saddr, r.sport)?,
                addr(family, &r.daddr, r.dport)?,
            )
        };
        Ok(Event {
            ts_ns: r.ts_ns,
            skaddr: r.skaddr,
            pid: r.tgid,
            tid: r.tid,
            comm: Comm(r.comm),
            netns: r.netns,
            local,
            remote,
            kind,
            gap,
        })
    }
}

impl Event {
    /// Decodes a ring buffer record.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < tcptrace_common::RAW_EVENT_SIZE {
            return Err(DecodeError::ShortRecord(bytes.len()));
        }
        // SAFETY: length checked; RawEvent is plain old data, read unaligned.
        let raw = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) };
        Event::try_from(&raw)
    }

    /// The inverse of [`Event::decode`], for recordings and tests.
    pub fn to_raw(&self) -> RawEvent {
        let (oldstate, newstate, aux, aux32, k) = match self.kind {
            EventKind::State { old, new } => (old as u8, new as u8, 0, 0, kind::STATE),
            EventKind::Retransmit { state } => {
                (0, state.map_or(0, |s| s as u8), 0, 0, kind::RETRANSMIT)
            }
            EventKind::RetransmitSynack { req } => (
                0,
                TcpState::NewSynRecv as u8,
                req,
                0,
                kind::RETRANSMIT_SYNACK,
            ),
            EventKind::ResetSent { state, reason } => {
                (0, state.map_or(0, |s| s as u8), 0, reason, kind::RESET_SENT)
            }
            EventKind::ResetReceived { state } => {
                (0, state.map_or(0, |s| s as u8), 0, 0, kind::RESET_RECEIVED)
            }
            EventKind::SynReceived {
                cookie,
                accept_queue,
                syn_queue,
            } => (
                0,
                0,
                cookie,
                (u32::from(accept_queue) << 16) | u32::from(syn_queue),
                kind::SYN_RECEIVED,
            ),
            EventKind::PassiveEstablished { cookie } => {
                (0, 0, cookie, 0, kind::PASSIVE_ESTABLISHED)
            }
            EventKind::PassiveRtt {
                rtt_us,
                synack_retransmits,
            } => (
                0,
                0,
                u64::from(synack_retransmits),
                rtt_us,
                kind::PASSIVE_RTT,
            ),
        };
        let bytes = |a: &SocketAddr| -> [u8; 16] {
            let mut out = [0u8; 16];
            match a.ip() {
                IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => out = v6.octets(),
            }
            out
        };
        RawEvent {
            ts_ns: self.ts_ns,
            skaddr: self.skaddr,
            aux,
            saddr: bytes(&self.local),
            daddr: bytes(&self.remote),
            comm: self.comm.0,
            tgid: self.pid,
            tid: self.tid,
            netns: self.netns,
            aux32,
            sport: self.local.port(),
            dport: self.remote.port(),
            family: if self.local.is_ipv6() {
                AF_INET6 as u8
            } else {
                AF_INET as u8
            } | if self.gap {
                tcptrace_common::GAP_BIT
            } else {
                0
            },
            kind: k,
            oldstate,
            newstate,
        }
    }
}

/// Names of `enum sk_rst_reason` (include/net/rstreason.h) for the reasons userspace shows.
/// Kernels add reasons over time; unknown numbers are shown as numbers.
pub fn rst_reason_name(reason: u32) -> Option<&'static str> {
    const NAMES: [&str; 17] = [
        "NOT_SPECIFIED",
        "NO_SOCKET",
        "TCP_INVALID_ACK_SEQUENCE",
        "TCP_RFC7323_PAWS",
        "TCP_TOO_OLD_ACK",
        "TCP_ACK_UNSENT_DATA",
        "TCP_FLAGS",
        "TCP_OLD_ACK",
        "TCP_ABORT_ON_DATA",
        "TCP_TIMEWAIT_SOCKET",
        "INVALID_SYN",
        "TCP_ABORT_ON_CLOSE",
        "TCP_ABORT_ON_LINGER",
        "TCP_ABORT_ON_MEMORY",
        "TCP_STATE",
        "TCP_KEEPALIVE_TIMEOUT",
        "TCP_DISCONNECT_WITH_DATA",
    ];
    NAMES.get(reason as usize).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_state(old: u8, new: u8) -> RawEvent {
        RawEvent {
            ts_ns: 42,
            skaddr: 0xffff_8880_1234_5678,
            aux: 0,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            tgid: 100,
            tid: 101,
            netns: 4026531840,
            aux32: 0,
            sport: 40000,
            dport: 80,
            family: AF_INET as u8,
            kind: kind::STATE,
            oldstate: old,
            newstate: new,
        }
    }

    #[test]
    fn decodes_a_transition() {
        let ev = Event::try_from(&raw_state(2, 1)).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::State {
                old: TcpState::SynSent,
                new: TcpState::Established
            }
        );
        assert_eq!(ev.local, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(ev.remote, "10.1.2.3:80".parse().unwrap());
        assert_eq!(ev.comm.as_str(), "curl");
        assert_eq!(ev.pid, 100);
    }

    #[test]
    fn round_trips_through_raw() {
        let ev = Event::try_from(&raw_state(10, 3)).unwrap();
        assert_eq!(Event::try_from(&ev.to_raw()).unwrap(), ev);
        let mut v6 = ev;
        v6.local = "[::1]:5".parse().unwrap();
        v6.remote = "[2001:db8::1]:443".parse().unwrap();
        v6.kind = EventKind::ResetSent {
            state: None,
            reason: 1,
        };
        assert_eq!(Event::try_from(&v6.to_raw()).unwrap(), v6);
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(
            Event::try_from(&raw_state(0, 1)),
            Err(DecodeError::UnknownState(0))
        );
        assert_eq!(
            Event::try_from(&raw_state(1, 13)),
            Err(DecodeError::UnknownState(13))
        );
        let mut r = raw_state(1, 4);
        r.kind = 99;
        assert_eq!(Event::try_from(&r), Err(DecodeError::UnknownKind(99)));
        let mut r = raw_state(1, 4);
        r.family = 1;
        assert_eq!(Event::try_from(&r), Err(DecodeError::UnknownFamily(1)));
        assert_eq!(Event::decode(&[0u8; 10]), Err(DecodeError::ShortRecord(10)));
    }

    #[test]
    fn state_names_match_the_kernel() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(s as u8), Some(s));
            assert_eq!(TcpState::from_name(s.name()), Some(s));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::CloseWait.name(), "CLOSE_WAIT");
    }
}
