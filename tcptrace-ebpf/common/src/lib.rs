//! Records that cross the kernel/user boundary, defined once for both sides.
//!
//! The kernel programs in `tcptrace-ebpf` write [`RawEvent`]s into one BPF ring buffer and read
//! their field offsets from one [`Offsets`] global; userspace (`tcptrace`) decodes the same
//! structs. Everything here is `#[repr(C)]`, fixed-size and free of pointers, so the bytes mean the
//! same thing on both sides of the ring buffer.
#![no_std]

/// What kind of kernel event a [`RawEvent`] records (its `kind` byte).
pub mod kind {
    /// `sock/inet_sock_set_state`: `oldstate` -> `newstate`.
    pub const STATE: u8 = 1;
    /// `tcp/tcp_retransmit_skb`: a segment (SYN, data or FIN) was retransmitted; `newstate` holds
    /// the socket's state at that moment.
    pub const RETRANSMIT: u8 = 2;
    /// `tcp/tcp_retransmit_synack`: a listener retransmitted a SYN-ACK for a request socket;
    /// `skaddr` is the listener, `aux` the request socket.
    pub const RETRANSMIT_SYNACK: u8 = 3;
    /// `tcp/tcp_send_reset`: this host sent a RST; `newstate` is the socket's state (0 when no
    /// socket matched the segment, e.g. a SYN to a closed port); `aux32` the `sk_rst_reason`.
    pub const RESET_SENT: u8 = 4;
    /// `tcp/tcp_receive_reset`: a RST arrived for a socket; `newstate` is its state then.
    pub const RESET_RECEIVED: u8 = 5;
    /// sock_ops on the cgroup v2 root: a SYN arrived at a listener and a request socket was made
    /// (`BPF_SOCK_OPS_RWND_INIT` on a request socket). `aux` is the netns cookie, `skaddr` the
    /// request socket, `aux32` the listener's queues then: accept queue length in the high 16
    /// bits, SYN queue length in the low 16 (each capped at 65535).
    pub const SYN_RECEIVED: u8 = 6;
    /// sock_ops: a passive (accepted) socket became ESTABLISHED
    /// (`BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB`). `aux` is the netns cookie.
    pub const PASSIVE_ESTABLISHED: u8 = 7;
    /// tp_btf on `inet_sock_set_state`, SYN_RECV -> ESTABLISHED: the handshake as the kernel noted
    /// it in the new socket, in `aux32`, µs (the first SYN-ACK's round trip, `tcp_sock.srtt_us >>
    /// 3`, or after SYN-ACK timeouts `total_rto_time`); `aux` the SYN-ACKs retransmitted
    /// (`total_retrans`; 0 in recordings made before it was kept). Fallback when no cgroup v2 is
    /// mounted.
    pub const PASSIVE_RTT: u8 = 8;
}

/// One event as the kernel writes it. 96 bytes; one ring buffer slot is this plus an 8-byte header.
///
/// Addresses are in network byte order as the kernel stores them; ports in host order.
/// "Local" (`saddr`/`sport`) is always this host's end of the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket (`struct sock *`); the key of a socket's life.
    pub skaddr: u64,
    /// Kind-specific: the request socket for [`kind::RETRANSMIT_SYNACK`], the socket cookie for
    /// [`kind::RESET_RECEIVED`] (kernels that report it), else 0.
    pub aux: u64,
    /// Local address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    /// Remote address, same layout.
    pub daddr: [u8; 16],
    /// `comm` of the task on the CPU (often not the socket's owner: see the README).
    pub comm: [u8; 16],
    /// Thread-group id (what userspace calls the pid) of the task on the CPU.
    pub tgid: u32,
    /// Thread id of the task on the CPU.
    pub tid: u32,
    /// Inode number of the socket's network namespace (0 when it could not be read).
    pub netns: u32,
    /// Kind-specific 32-bit value: `sk_rst_reason` for [`kind::RESET_SENT`], `err` for
    /// [`kind::RETRANSMIT`] on kernels that report it, else 0.
    pub aux32: u32,
    pub sport: u16,
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10); bit [`GAP_BIT`] set when this CPU dropped events (ring
    /// buffer full) just before this one: durations must not be measured across it.
    pub family: u8,
    /// One of [`kind`].
    pub kind: u8,
    /// Previous state for [`kind::STATE`], else 0. Kernel numbering (`TCP_ESTABLISHED` = 1, ...).
    pub oldstate: u8,
    /// New state for [`kind::STATE`]; the socket's state at the event otherwise (0 = unknown).
    pub newstate: u8,
}

pub const RAW_EVENT_SIZE: usize = core::mem::size_of::<RawEvent>();
const _: () = assert!(RAW_EVENT_SIZE == 96);
// Recordings document the kind byte at this offset (tcptrace/src/source/record.rs).
const _: () = assert!(core::mem::offset_of!(RawEvent, kind) == 93);

/// Set in [`RawEvent::family`] on the first event a CPU writes after it had to drop some.
pub const GAP_BIT: u8 = 0x80;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// Where a tracepoint field sits in the tracepoint's record, read from its tracefs `format` file.
/// `NONE` marks a field this kernel does not have.
pub const NONE: u16 = u16::MAX;

/// Field offsets of `sock/inet_sock_set_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetStateOffsets {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// Bytes of the record to copy (the end of its last field; at most [`RECORD_MAX`]).
    pub len: u16,
}

/// Field offsets shared by the `tcp/*` tracepoints that report a 4-tuple as separate v4/v6
/// fields (`tcp_retransmit_skb`, `tcp_retransmit_synack`, `tcp_receive_reset`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TupleOffsets {
    pub skaddr: u16,
    /// `state` (retransmit_skb), `req` (retransmit_synack), or [`NONE`].
    pub extra: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `err` (retransmit_skb, 6.17+) or `sock_cookie` (receive_reset, 6.10+), or [`NONE`].
    pub aux: u16,
    /// Bytes of the record to copy.
    pub len: u16,
    pub _pad: u16,
}

/// Field offsets of `tcp/tcp_send_reset`, whose addresses are `struct sockaddr_in6`-sized
/// buffers holding a `sockaddr_in` or `sockaddr_in6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendResetOffsets {
    pub skaddr: u16,
    pub skbaddr: u16,
    pub state: u16,
    /// `reason`, or [`NONE`] on kernels before 6.10.
    pub reason: u16,
    pub saddr: u16,
    pub daddr: u16,
    /// Bytes of the record to copy.
    pub len: u16,
    pub _pad: u16,
}

/// The kernel programs copy a tracepoint's record once, into a buffer of this size, and read
/// fields from the copy: one helper call per event instead of one per field.
pub const RECORD_MAX: u16 = 128;

/// Offsets of kernel struct members, from /sys/kernel/btf/vmlinux, used to walk from a socket to
/// its network namespace and state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `struct sock` -> `__sk_common.skc_net` (a `possible_net_t`, whose first member is the
    /// `struct net *`).
    pub sock_net: u32,
    /// `struct sock` -> `__sk_common.skc_state` (one byte).
    pub sock_state: u32,
    /// `struct net` -> `ns.inum`.
    pub net_inum: u32,
    /// `struct sk_buff` -> `dev` (for resets sent with no socket, the namespace comes from the
    /// device the segment arrived on).
    pub skb_dev: u32,
    /// `struct net_device` -> `nd_net` (a `possible_net_t`).
    pub dev_net: u32,
    /// `struct sock` -> `sk_protocol` (u16), for the tp_btf program.
    pub sock_protocol: u32,
    /// `struct tcp_sock` -> `srtt_us` (u32, smoothed RTT << 3), for the tp_btf program.
    pub tcp_srtt_us: u32,
    /// `struct sock` -> `__sk_common.skc_family` (u16) and `.skc_num` (local port, host order).
    pub sock_family: u32,
    pub sock_num: u32,
    /// `struct bpf_sock_ops_kern` -> `sk`: the socket (request socket for a SYN) behind a
    /// sock_ops context, read as a plain address.
    pub sock_ops_sk: u32,
    /// `struct request_sock` -> `rsk_listener`: the listener a SYN arrived at.
    pub req_listener: u32,
    /// `struct sock` -> `sk_ack_backlog` (u32): the listener's accept queue length.
    pub sock_ack_backlog: u32,
    /// `struct inet_connection_sock` -> `icsk_accept_queue.qlen` (u32): request sockets waiting
    /// for their final ACK (the SYN queue).
    pub icsk_syn_qlen: u32,
    /// `struct sock` -> `__sk_common.skc_dport` (remote port, network order).
    pub sock_dport: u32,
    /// `struct sock` -> `__sk_common.skc_v6_daddr` (16 bytes): tells a v4-mapped peer on an
    /// IPv6 socket (an IPv4 connection) from a real IPv6 one.
    pub sock_v6_daddr: u32,
    /// `struct tcp_sock` -> `total_retrans` (u32): at ESTABLISHED, how many SYNs (or SYN-ACKs,
    /// copied from the request socket) were retransmitted.
    pub tcp_total_retrans: u32,
    /// `struct inet_sock` -> `inet_sport` (local port, network order): still set when an
    /// accepted socket's `skc_num` has been cleared at CLOSE.
    pub inet_sport: u32,
    /// For the streaming tp_btf programs, the addresses the classic tracepoint reports:
    /// `struct sock` -> `__sk_common.skc_rcv_saddr` (what `inet_saddr` holds for TCP) and
    /// `.skc_daddr` (IPv4, network order) and `.skc_v6_rcv_saddr` (16 bytes).
    pub sock_rcv_saddr: u32,
    pub sock_daddr: u32,
    pub sock_v6_saddr: u32,
    /// `struct tcp_sock` -> `total_rto` (u16) and `total_rto_time` (u32, ms), Linux 6.7+: an
    /// accepted socket whose SYN-ACK was retransmitted by timer gets the number of timeouts and
    /// the time since the first SYN-ACK (what the srtt fallback times such handshakes by).
    pub tcp_total_rto: u32,
    pub tcp_total_rto_time: u32,
    /// `struct task_struct` -> `comm` (16 bytes), `tgid` and `pid` (i32): the task on the CPU's
    /// name and ids, read directly by the tracing programs (cheaper than the helpers).
    pub task_comm: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    /// `struct sock` -> `__sk_common.skc_cookie` (u64; 0 until someone asks for it): read
    /// directly, a helper call is made only for a socket whose cookie is not made yet.
    pub sock_cookie: u32,
}

/// Everything the kernel programs need to know about this kernel's layouts, handed to them as the
/// `OFFSETS` global at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub set_state: SetStateOffsets,
    pub retransmit_skb: TupleOffsets,
    pub retransmit_synack: TupleOffsets,
    pub receive_reset: TupleOffsets,
    pub send_reset: SendResetOffsets,
    pub _pad: u32,
    pub kernel: KernelOffsets,
}

/// Settings handed to the kernel programs as the `CONFIG` global at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Wake the reader only once this many bytes wait in the ring buffer; below that userspace
    /// drains on its own timer. Batching wake-ups is what keeps the cost per event low.
    pub wakeup_bytes: u64,
    /// Non-zero: emit aya-log debug lines.
    pub debug: u32,
    /// Non-zero: in-kernel aggregation (see [`agg`]); zero: stream every transition.
    pub aggregate: u32,
    /// In-kernel filters (the user's `--netns`, `-4`/`-6`, `--port`); 0 = any.
    pub netns: u32,
    /// Aggregation mode: `SOCKS` and `SYNS` have a power-of-two number of slots; these masks
    /// pick a slot from a socket cookie or a SYN's hash.
    pub socks_mask: u32,
    pub syns_mask: u32,
    /// Aggregation mode: ports that get their own rows in `PORT_ROWS` (`--max-ports`).
    pub port_blocks: u32,
    /// Ring buffers in use, a power of two up to [`MAX_RINGS`]: a CPU writes to ring
    /// `cpu & (rings - 1)`.
    pub rings: u32,
    /// [`AF_INET`], [`AF_INET6`] or 0.
    pub family: u16,
    /// How many of `ports` are set (0 = any port).
    pub nports: u16,
    pub ports: [u16; MAX_KERNEL_PORTS],
}

/// Event ring buffers (`EVENTS0` ..): one per CPU up to this many, shared beyond. One ring
/// shared by every CPU made its reservation lock the largest cost of streaming (measured: 215 ns
/// per event with two CPUs producing, 58 ns with one).
pub const MAX_RINGS: u32 = 8;

/// `--port` values the kernel can filter on; more fall back to streaming.
pub const MAX_KERNEL_PORTS: usize = 8;

/// Indexes of the per-CPU counters in the `COUNTERS` map.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Kernel reads (tracepoint fields, socket fields) that failed; the field was left 0.
    pub const READ_ERRORS: u32 = 1;
    /// 1 while this CPU has dropped events not yet followed by a written one (a gap to flag).
    pub const GAP_PENDING: u32 = 2;
    // In-kernel aggregation (see [`crate::agg`]):
    /// CLOSE -> SYN_SENT.
    pub const ACTIVE_OPENS: u32 = 3;
    /// LISTEN -> SYN_RECV (an accepted socket is born).
    pub const PASSIVE_OPENS: u32 = 4;
    /// Any state -> CLOSE, listeners excepted.
    pub const CLOSED: u32 = 5;
    /// Transitions that passed the filters.
    pub const TRANSITIONS: u32 = 6;
    /// Transitions of sockets whose previous state tcptrace did not see (older than the run, or
    /// a transition skipped by the kernel): no dwell measured.
    pub const UNSEEN: u32 = 7;
    /// Sockets not tracked: every slot their cookie may use in the bounded socket table held
    /// another live socket (raise --max-sockets).
    pub const SOCKS_UNTRACKED: u32 = 8;
    /// Samples not kept per port because the per-port table was full.
    pub const PORTS_FULL: u32 = 9;
    /// Waiting SYNs overwritten by another SYN (one slot of the bounded SYN table; a flood).
    pub const SYNS_EVICTED: u32 = 10;
    /// Accepted sockets whose SYN was not seen (older than the run, table full, SYN cookies).
    pub const PASSIVE_UNMATCHED: u32 = 11;
    /// Active handshakes by SYN retransmits: `ACTIVE_RETRANS + n` (n capped at RETRANS_CAP).
    pub const ACTIVE_RETRANS: u32 = 12;
    /// Passive handshakes by SYN-ACK retransmits, same layout.
    pub const PASSIVE_RETRANS: u32 = 20;
    /// Buckets per retransmit count: 0..=6 and "7 or more".
    pub const RETRANS_CAP: u32 = 7;
    /// Sockets that gave their slot to a new socket when every slot its cookie may use was
    /// taken: the oldest in FIN_WAIT1 among them (see `state_agg`).
    pub const SOCKS_EVICTED: u32 = 28;
    pub const COUNT: u32 = 29;
}

/// In-kernel aggregation: what the kernel keeps so that routine transitions never cross to
/// userspace. Per socket, a [`SockTimes`] in a table keyed by socket cookie (removed at CLOSE); per
/// CPU, log-linear histograms ([`Buckets`]) that userspace reads every second and folds into
/// HdrHistograms. Values are microseconds (queue lengths for the queue metrics).
pub mod agg {
    /// Sub-buckets per power of two: 32, so a bucket's midpoint is within 1/64 (1.6 %) of any
    /// value in it. Values below 64 are exact.
    pub const SUB_BITS: u32 = 5;
    const SUB: u32 = 1 << SUB_BITS;
    /// Buckets for values up to 2^32 - 1 (71 minutes in µs); larger values land in the last.
    pub const BUCKETS: usize = 896;

    /// Per-CPU histogram rows in `HISTS`: dwell in each state (`DWELL + state`), handshakes,
    /// lifetime.
    pub const DWELL: u32 = 0;
    pub const ACTIVE: u32 = 16;
    pub const PASSIVE: u32 = 17;
    pub const LIFETIME: u32 = 18;
    pub const ROWS: u32 = 19;

    /// Metrics of the per-port histograms ([`PortKey::metric`]): dwell of accepted sockets by
    /// listening port (`PORT_DWELL + state`), passive handshakes by listening port, active
    /// handshakes by remote port, listener queues at each SYN.
    /// (States up to CLOSING, 11; NEW_SYN_RECV is never a full socket's.)
    pub const PORT_DWELL: u16 = 0;
    pub const PORT_PASSIVE: u16 = 12;
    pub const PORT_ACTIVE_BY_REMOTE: u16 = 13;
    pub const PORT_ACCEPT_QUEUE: u16 = 14;
    pub const PORT_SYN_QUEUE: u16 = 15;

    /// The bucket of `v`: exact below 64, then 32 per power of two.
    #[inline(always)]
    pub fn bucket(v: u64) -> usize {
        let v = if v > u32::MAX as u64 {
            u32::MAX
        } else {
            v as u32
        };
        if v < 2 * SUB {
            return v as usize;
        }
        // Index of the highest set bit, without loops (the verifier wants none).
        let mut msb = 0u32;
        let mut x = v;
        if x >= 1 << 16 {
            x >>= 16;
            msb += 16;
        }
        if x >= 1 << 8 {
            x >>= 8;
            msb += 8;
        }
        if x >= 1 << 4 {
            x >>= 4;
            msb += 4;
        }
        if x >= 1 << 2 {
            x >>= 2;
            msb += 2;
        }
        if x >= 1 << 1 {
            msb += 1;
        }
        let shift = msb - SUB_BITS;
        ((shift + 1) * SUB + ((v >> shift) & (SUB - 1))) as usize
    }

    /// The values bucket `i` holds: `[low, high)`.
    pub fn bounds(i: usize) -> (u64, u64) {
        let i = i as u64;
        let sub = u64::from(SUB);
        if i < 2 * sub {
            return (i, i + 1);
        }
        let shift = i / sub - 1;
        let low = (sub + i % sub) << shift;
        (low, low + (1 << shift))
    }

    /// One histogram row: a count per bucket. u32 per CPU is enough: userspace reads every
    /// second and takes wrapping differences. Two spare counts at the end: the verifier bounds
    /// the 64-bit atomic add on the last pair of buckets as if it could start 4 bytes later.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct Buckets(pub [u32; ROW_LEN]);

    pub const ROW_LEN: usize = BUCKETS + 2;

    /// Key of a per-port histogram.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct PortKey {
        pub port: u16,
        pub metric: u16,
    }

    /// Rows per port in `PORT_ROWS`: a block of one row per metric (`PORT_DWELL + state` ..
    /// [`PORT_SYN_QUEUE`]). A port's block is found once (`PORT_INDEX`), then remembered where
    /// it is used again (a socket's slot, a waiting SYN): an array access instead of a hash
    /// lookup per measurement.
    pub const PORT_METRICS: u32 = 16;
    /// `SockTimes::pblock`: block not looked up yet.
    pub const PBLOCK_UNKNOWN: u16 = 0;
    /// ... no block to be had (every one taken): the values are counted in `PORTS_FULL`.
    pub const PBLOCK_FULL: u16 = u16::MAX;

    /// What the kernel remembers of one socket: a slot of `SOCKS`, an array indexed by the
    /// socket cookie's low bits (no hash map: a lookup is one array access, no lock, no
    /// allocation). The cookie tells whose times the slot holds.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SockTimes {
        /// The socket cookie (0: free slot).
        pub cookie: u64,
        /// When the socket entered `state` (CLOCK_MONOTONIC ns); 0 = not known.
        pub since_ns: u64,
        /// When it was born (CLOSE -> SYN_SENT, LISTEN -> SYN_RECV, CLOSE -> LISTEN); 0 = before
        /// the run.
        pub born_ns: u64,
        /// Its state as of the last transition seen.
        pub state: u8,
        /// [`FLAG_PASSIVE`]: an accepted socket.
        pub flags: u8,
        /// Listening port of an accepted socket.
        pub port: u16,
        /// That port's block in `PORT_ROWS` plus one, or [`PBLOCK_UNKNOWN`] / [`PBLOCK_FULL`].
        pub pblock: u16,
        pub _pad: u16,
    }

    pub const FLAG_PASSIVE: u8 = 1;

    /// Slots a socket may use in `SOCKS`: its cookie's and the next ones, so a socket that lives
    /// long keeps its slot while newer sockets' cookies come round to it again.
    pub const SOCK_PROBES: u32 = 4;

    /// A SYN waiting for its accepted socket: a slot of `SYNS`, an array indexed by the high
    /// half of its key's hash ([`syn_hash`]). 16 bytes, the key's 64-bit hash standing for the
    /// key (two keys share a hash with odds of 2^-64): SYNs land anywhere in the table, and a
    /// table four times smaller spares a cache and TLB miss on most of them (sock_ops took
    /// ~18 ns less per run side by side).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct SynSlot {
        /// [`syn_hash`] of the SYN's key.
        pub tag: u64,
        /// When the SYN arrived; 0: free.
        pub ts_ns: u64,
    }

    /// A waiting SYN older than this is stale (its handshake never completed): overwritten
    /// without counting, never matched. The kernel gives up on a request socket after
    /// tcp_synack_retries, about a minute by default.
    pub const SYN_MAX_AGE_NS: u64 = 180_000_000_000;

    /// A SYN's key hashed (multiply-xor over its words): the slot's tag; its high half picks
    /// the slot.
    #[inline(always)]
    pub fn syn_hash(k: &SynKey) -> u64 {
        let mut h: u64 = k.cookie
            ^ (u64::from(k.lport) << 16)
            ^ u64::from(k.rport)
            ^ (u64::from(k.family) << 32);
        let words = [
            k.local[0],
            k.local[1],
            k.local[2],
            k.local[3],
            k.remote[0],
            k.remote[1],
            k.remote[2],
            k.remote[3],
        ];
        for w in words {
            h = (h ^ u64::from(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        h
    }

    /// A SYN waiting for its accepted socket: netns cookie and 4-tuple as sock_ops sees them
    /// (addresses in network order, IPv4 in the first word; ports in host order).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct SynKey {
        pub cookie: u64,
        pub local: [u32; 4],
        pub remote: [u32; 4],
        pub lport: u16,
        pub rport: u16,
        pub family: u16,
        pub _pad: u16,
    }
}

impl Offsets {
    /// All zeros: the value the kernel object carries until the loader overrides it.
    pub const ZERO: Offsets = unsafe { core::mem::zeroed() };
}

impl Config {
    pub const ZERO: Config = Config {
        wakeup_bytes: 0,
        debug: 0,
        aggregate: 0,
        netns: 0,
        socks_mask: 0,
        syns_mask: 0,
        port_blocks: 0,
        rings: 1,
        family: 0,
        nports: 0,
        ports: [0; MAX_KERNEL_PORTS],
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C) plain data with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::RawEvent {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::agg::Buckets {}
    unsafe impl aya::Pod for super::agg::PortKey {}
    unsafe impl aya::Pod for super::agg::SockTimes {}
    unsafe impl aya::Pod for super::agg::SynKey {}
    unsafe impl aya::Pod for super::agg::SynSlot {}
}
