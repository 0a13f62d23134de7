//! tcptrace's kernel side: thin tracepoint programs, one ring buffer, and an in-kernel
//! aggregation mode.
//!
//! Streaming mode: each program copies what its tracepoint reports into a fixed-size [`RawEvent`]
//! and nothing more: no maps keyed by socket, no policy. Userspace owns interpretation.
//!
//! Aggregation mode (the default for `watch`): routine state changes never cross to userspace.
//! `state_agg` (tp_btf, which hands over a typed socket pointer) keeps each socket's state-entry
//! time in a table keyed by socket cookie and adds each dwell to a per-CPU log-linear histogram; sock_ops
//! times passive handshakes through a small table of waiting SYNs. Userspace reads the
//! histograms every second. Retransmits and resets, which are rare and which the operator wants
//! one by one, still stream.
//!
//! Field offsets are not compiled in: the loader reads them from tracefs and BTF and hands them
//! over in `OFFSETS`.
//!
//! Wake-ups are batched: a record is submitted with `BPF_RB_NO_WAKEUP` unless enough bytes are
//! waiting (`CONFIG.wakeup_bytes`); the reader also drains on its own short timer. Waking the
//! reader once per event is what makes per-event tools collapse at high connection rates.
#![no_std]
#![no_main]
// For the BPF atomic add (see `port_hist_add`); the kernel programs build with nightly anyway.
#![allow(internal_features)]
#![feature(core_intrinsics)]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    bindings::{BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RWND_INIT},
    helpers::generated::{bpf_get_current_task_btf, bpf_get_netns_cookie, bpf_get_socket_cookie},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{
            bpf_get_current_comm as bpf_get_current_comm_into, bpf_get_smp_processor_id,
            bpf_probe_read_kernel, bpf_skc_to_tcp_sock,
        },
    },
    macros::{btf_tracepoint, map, sock_ops, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, SockOpsContext, TracePointContext},
};
use aya_log_ebpf::debug;
use tcptrace_common::{
    AF_INET, AF_INET6, Config, GAP_BIT, IPPROTO_TCP, MAX_KERNEL_PORTS, NONE, Offsets, RECORD_MAX,
    RawEvent, TupleOffsets,
    agg::{self, Buckets, SockTimes, SynKey, SynSlot},
    counter, kind,
};

/// Overridden by the loader with this kernel's offsets.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::ZERO;

/// Overridden by the loader.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::ZERO;

/// The event streams to userspace, one per CPU (`CONFIG.rings` of them in use; userspace merges
/// them by time). Sizes are set by the loader (`--ring-size`, split among the rings).
#[map]
static EVENTS0: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static EVENTS1: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static EVENTS2: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static EVENTS3: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static EVENTS4: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static EVENTS5: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static EVENTS6: RingBuf = RingBuf::with_byte_size(1 << 22, 0);
#[map]
static EVENTS7: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Per-CPU counters indexed by `tcptrace_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Aggregation mode: each socket's state-entry and birth times, in the slot its cookie's low
/// bits pick (`CONFIG.socks_mask`; the loader sizes it from `--max-sockets`). An array, not a
/// hash map: one lock-free access per change (a hash map cost ~150 ns more per event here).
/// sock_diag reports the same cookie, so userspace finds a CLOSE_WAIT socket's entry time.
#[map]
static SOCKS: Array<SockTimes> = Array::with_max_entries(1 << 18, 0);

/// Aggregation mode: per-CPU histogram rows indexed by `agg::DWELL + state`, `agg::ACTIVE`, ...
#[map]
static HISTS: PerCpuArray<Buckets> = PerCpuArray::with_max_entries(agg::ROWS, 0);

/// Aggregation mode: per-port histograms, a block of `agg::PORT_METRICS` rows per port (size set
/// by the loader from `--max-ports`). Shared by all CPUs and preallocated: a row is never
/// refused for want of memory in a burst (per-CPU rows allocated on demand were), and the
/// memory does not grow with the number of CPUs.
#[map]
static PORT_ROWS: Array<Buckets> = Array::with_max_entries(64 * agg::PORT_METRICS, 0);

/// Aggregation mode: which block of `PORT_ROWS` a port has (size: `--max-ports`).
#[map]
static PORT_INDEX: HashMap<u16, u32> = HashMap::with_max_entries(64, 0);

/// Aggregation mode: which port a block of `PORT_ROWS` belongs to (size: `--max-ports`).
#[map]
static PORT_OWNER: HashMap<u32, u16> = HashMap::with_max_entries(64, 0);

/// Aggregation mode: `PORT_INDEX` in front of itself as an array, four ports per entry (a port's
/// block plus one, 0 while unknown): a hash lookup per SYN and per handshake cost ~40 ns, an
/// array entry is a plain load. A port's block never changes once given, so nothing goes stale.
#[map]
static PORT_CACHE: Array<[u16; 4]> = Array::with_max_entries(1 << 14, 0);

/// Aggregation mode: SYN arrival times waiting for their accepted socket, in the slot a hash
/// of the netns cookie and 4-tuple picks (`CONFIG.syns_mask`; size set by the loader).
#[map]
static SYNS: Array<SynSlot> = Array::with_max_entries(65536, 0);

/// Aggregation mode, set by the loader after attaching: `SETTINGS[0]` = 1 when passive
/// handshakes come from the srtt estimate (the default, or sock_ops could not attach).
#[map]
static SETTINGS: Array<u32> = Array::with_max_entries(1, 0);

/// Aggregation mode without sock_ops: state_agg times passive handshakes by srtt and samples
/// the accept queue itself.
#[inline(always)]
fn passive_by_srtt() -> bool {
    SETTINGS.get(0) == Some(&1)
}

/// `TCP_NEW_SYN_RECV`: the state of a request socket (what a SYN-ACK retransmit belongs to).
const TCP_NEW_SYN_RECV: u8 = 12;

/// Reads a loader-provided global without letting the compiler assume its compile-time value.
macro_rules! global {
    ($($path:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const $($path)+) }
    };
}

/// This CPU's ring buffer.
#[inline(always)]
fn ring() -> &'static RingBuf {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    match cpu & (global!(CONFIG.rings).wrapping_sub(1) & (tcptrace_common::MAX_RINGS - 1)) {
        0 => &EVENTS0,
        1 => &EVENTS1,
        2 => &EVENTS2,
        3 => &EVENTS3,
        4 => &EVENTS4,
        5 => &EVENTS5,
        6 => &EVENTS6,
        _ => &EVENTS7,
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot, and tracing programs do not nest on one CPU: a plain add is enough.
        unsafe { *slot += 1 };
    }
}

/// Copies `len` bytes of kernel memory at `src` to `dst`; on failure zeroes nothing (the caller's
/// buffer was zeroed) and counts the error.
#[inline(always)]
fn read_into(dst: *mut u8, len: u32, src: *const u8) -> bool {
    let ret = unsafe { bpf_probe_read_kernel(dst.cast::<c_void>(), len, src.cast::<c_void>()) };
    if ret != 0 {
        bump(counter::READ_ERRORS);
        return false;
    }
    true
}

#[inline(always)]
fn read<T: Default>(src: *const u8) -> T {
    let mut v = T::default();
    read_into(
        (&raw mut v).cast::<u8>(),
        core::mem::size_of::<T>() as u32,
        src,
    );
    v
}

/// A copy of a tracepoint's record: one `bpf_probe_read_kernel` per event, then fields are read
/// from the copy at the loader-provided offsets (constants to the verifier: `.rodata` is frozen).
struct Record {
    /// Only the first `len` bytes are written (by the helper, which zeroes them on failure);
    /// reads never go past `len`. Not zero-initialised: that would cost a memset per event.
    buf: core::mem::MaybeUninit<[u8; RECORD_MAX as usize]>,
    len: usize,
}

/// Plain integers readable from a record, byte by byte (no unaligned loads).
trait FromRecord: Default {
    const SIZE: usize;
    fn from_bytes(b: &[u8]) -> Self;
}

macro_rules! from_record {
    ($($t:ty),*) => {$(
        impl FromRecord for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            #[inline(always)]
            fn from_bytes(b: &[u8]) -> Self {
                let mut v = [0u8; core::mem::size_of::<$t>()];
                v.copy_from_slice(&b[..core::mem::size_of::<$t>()]);
                <$t>::from_ne_bytes(v)
            }
        }
    )*};
}
from_record!(u16, i32, u32, u64);

impl Record {
    #[inline(always)]
    fn copy(ctx: &TracePointContext, len: u16) -> Record {
        let len = if len > RECORD_MAX { RECORD_MAX } else { len };
        let mut r = Record {
            buf: core::mem::MaybeUninit::uninit(),
            len: len as usize,
        };
        read_into(
            r.buf.as_mut_ptr().cast::<u8>(),
            len as u32,
            ctx.as_ptr() as *const u8,
        );
        r
    }

    #[inline(always)]
    fn slice(&self, off: usize, n: usize) -> Option<&[u8]> {
        if off + n > self.len {
            return None;
        }
        // SAFETY: bytes below `len` were written by the helper.
        Some(unsafe { core::slice::from_raw_parts(self.buf.as_ptr().cast::<u8>().add(off), n) })
    }

    /// The field at `offset`, or 0 when the kernel lacks it ([`NONE`]).
    #[inline(always)]
    fn get<T: FromRecord>(&self, offset: u16) -> T {
        if offset == NONE {
            return T::default();
        }
        self.slice(offset as usize, T::SIZE)
            .map_or_else(T::default, T::from_bytes)
    }

    /// Copies `N` bytes at `offset` into `dst`.
    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: u16, dst: &mut [u8]) {
        if let Some(src) = self.slice(offset as usize, N)
            && dst.len() >= N
        {
            dst[..N].copy_from_slice(src);
        }
    }
}

trait CtxPtr {
    fn as_ptr(&self) -> *mut c_void;
}
impl CtxPtr for TracePointContext {
    fn as_ptr(&self) -> *mut c_void {
        aya_ebpf::EbpfContext::as_ptr(self)
    }
}

/// `net->ns.inum` for a `possible_net_t` at `holder + net_offset`.
#[inline(always)]
fn netns_at(holder: u64, net_offset: u32) -> u32 {
    if holder == 0 {
        return 0;
    }
    let net: u64 = read((holder + net_offset as u64) as *const u8);
    if net == 0 {
        return 0;
    }
    read((net + global!(OFFSETS.kernel.net_inum) as u64) as *const u8)
}

#[inline(always)]
fn sock_netns(sk: u64) -> u32 {
    netns_at(sk, global!(OFFSETS.kernel.sock_net))
}

/// Where a program finds the task on the CPU's name and ids: tracing programs read them from
/// the task itself (`bpf_get_current_task_btf`, four loads; the two helper calls cost ~60 ns more
/// per event here), which sock_ops programs may not call; they use `bpf_get_current_comm` and
/// `bpf_get_current_pid_tgid`.
trait CurrentTask {
    const FROM_TASK: bool;
}
impl CurrentTask for TracePointContext {
    const FROM_TASK: bool = true;
}
impl CurrentTask for BtfTracePointContext {
    const FROM_TASK: bool = true;
}
impl CurrentTask for SockOpsContext {
    const FROM_TASK: bool = false;
}

/// The task on the CPU: its `comm`, thread-group id and thread id into the event.
#[inline(always)]
fn current_task<C: CurrentTask>(p: *mut RawEvent) {
    let k = global!(OFFSETS.kernel);
    if C::FROM_TASK && k.task_comm != u32::MAX && k.task_pid != u32::MAX && k.task_tgid != u32::MAX
    {
        let t = unsafe { bpf_get_current_task_btf() } as *const u8;
        let at = |off: u32| unsafe { t.add(off as usize) };
        unsafe {
            // The name is NUL-padded to its 16 bytes (set_task_comm), so the raw words are what
            // the helper would copy; the ids are what it would return (init namespace).
            let d = (&raw mut (*p).comm).cast::<u64>();
            *d = core::ptr::read_volatile(at(k.task_comm).cast::<u64>());
            *d.add(1) = core::ptr::read_volatile(at(k.task_comm + 8).cast::<u64>());
            (*p).tgid = core::ptr::read_volatile(at(k.task_tgid).cast::<u32>());
            (*p).tid = core::ptr::read_volatile(at(k.task_pid).cast::<u32>());
        }
    } else {
        let pid_tgid = bpf_get_current_pid_tgid();
        unsafe {
            // (On failure the helper zero-fills the name itself.)
            bpf_get_current_comm_into((&raw mut (*p).comm).cast::<c_void>(), 16);
            (*p).tgid = (pid_tgid >> 32) as u32;
            (*p).tid = pid_tgid as u32;
        }
    }
}

/// Where `kind` sits in the second word from `netns` on (see `emit`).
const TAIL_KIND_SHIFT: u32 =
    ((core::mem::offset_of!(RawEvent, kind) - core::mem::offset_of!(RawEvent, netns) - 8) * 8)
        as u32;
const _: () = assert!(
    core::mem::offset_of!(RawEvent, netns).is_multiple_of(8)
        && core::mem::size_of::<RawEvent>() - core::mem::offset_of!(RawEvent, netns) == 16
        && cfg!(target_endian = "little")
);

/// Reserves a slot, fills the fields every event shares, lets `fill` add the rest, submits.
#[inline(always)]
fn emit<C: aya_ebpf::EbpfContext + CurrentTask>(
    ctx: &C,
    kind: u8,
    sk: u64,
    fill: impl FnOnce(&mut RawEvent),
) {
    let events = ring();
    let Some(mut entry) = events.reserve::<RawEvent>(0) else {
        bump(counter::LOST);
        if let Some(flag) = COUNTERS.get_ptr_mut(counter::GAP_PENDING) {
            unsafe { *flag = 1 };
        }
        return;
    };
    let p: *mut RawEvent = entry.as_mut_ptr();
    // Every field is written in place: a record built on the stack and copied in cost a
    // memset call and a 96-byte copy per event. Volatile zero stores keep the compiler from
    // merging them back into a memset.
    unsafe {
        (*p).ts_ns = bpf_ktime_get_ns();
        (*p).skaddr = sk;
        let zero = (&raw mut (*p).aux).cast::<u64>();
        for i in 0..5 {
            // aux, saddr, daddr: five aligned words.
            core::ptr::write_volatile(zero.add(i), 0);
        }
        current_task::<C>(p);
        // netns, aux32 | sport, dport, family, kind, oldstate, newstate: two aligned words,
        // all zero but the kind (as field stores the compiler merged them into a call to a
        // byte-by-byte memset).
        let tail = (&raw mut (*p).netns).cast::<u64>();
        core::ptr::write_volatile(tail, 0);
        core::ptr::write_volatile(tail.add(1), u64::from(kind) << TAIL_KIND_SHIFT);
    }
    let slot = unsafe { &mut *p };
    fill(slot);
    // The first event after drops on this CPU says so, at its place in the stream.
    if let Some(flag) = COUNTERS.get_ptr_mut(counter::GAP_PENDING)
        && unsafe { *flag } != 0
    {
        unsafe { *flag = 0 };
        slot.family |= GAP_BIT;
    }
    if global!(CONFIG.debug) != 0 {
        debug!(ctx, "tcptrace: kind {} sk {:x}", kind, sk);
    }
    let flags = if events.query(BPF_RB_AVAIL_DATA as u64) >= global!(CONFIG.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// Fills family, ports and addresses from the separate v4/v6 fields most tcp tracepoints share.
#[inline(always)]
fn fill_tuple(rec: &Record, o: &TupleOffsets, family: u16, ev: &mut RawEvent) {
    ev.family = family as u8;
    ev.sport = rec.get(o.sport);
    ev.dport = rec.get(o.dport);
    copy_addrs(rec, family, [o.saddr, o.daddr, o.saddr_v6, o.daddr_v6], ev);
}

/// `offs`: saddr, daddr, saddr_v6, daddr_v6.
#[inline(always)]
fn copy_addrs(rec: &Record, family: u16, offs: [u16; 4], ev: &mut RawEvent) {
    if family == AF_INET6 {
        rec.bytes::<16>(offs[2], &mut ev.saddr);
        rec.bytes::<16>(offs[3], &mut ev.daddr);
    } else {
        rec.bytes::<4>(offs[0], &mut ev.saddr);
        rec.bytes::<4>(offs[1], &mut ev.daddr);
    }
}

#[tracepoint]
pub fn sock_set_state(ctx: TracePointContext) -> u32 {
    let o = global!(OFFSETS.set_state);
    let rec = Record::copy(&ctx, o.len);
    // Also fires for SCTP and MPTCP sockets: keep TCP only, before reserving anything.
    if rec.get::<u16>(o.protocol) != IPPROTO_TCP {
        return 0;
    }
    let family: u16 = rec.get(o.family);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let sk: u64 = rec.get(o.skaddr);
    emit(&ctx, kind::STATE, sk, |ev| {
        ev.oldstate = rec.get::<i32>(o.oldstate) as u8;
        ev.newstate = rec.get::<i32>(o.newstate) as u8;
        ev.family = family as u8;
        ev.sport = rec.get(o.sport);
        ev.dport = rec.get(o.dport);
        copy_addrs(&rec, family, [o.saddr, o.daddr, o.saddr_v6, o.daddr_v6], ev);
        ev.netns = sock_netns(sk);
    });
    0
}

#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    let o: TupleOffsets = global!(OFFSETS.retransmit_skb);
    let rec = Record::copy(&ctx, o.len);
    let family: u16 = rec.get(o.family);
    let sk: u64 = rec.get(o.skaddr);
    emit(&ctx, kind::RETRANSMIT, sk, |ev| {
        ev.newstate = rec.get::<i32>(o.extra) as u8;
        ev.aux32 = rec.get::<i32>(o.aux) as u32;
        fill_tuple(&rec, &o, family, ev);
        ev.netns = sock_netns(sk);
    });
    0
}

#[tracepoint]
pub fn tcp_retrans_synack(ctx: TracePointContext) -> u32 {
    let o: TupleOffsets = global!(OFFSETS.retransmit_synack);
    let rec = Record::copy(&ctx, o.len);
    let family: u16 = rec.get(o.family);
    let listener: u64 = rec.get(o.skaddr);
    emit(&ctx, kind::RETRANSMIT_SYNACK, listener, |ev| {
        ev.aux = rec.get(o.extra);
        ev.newstate = TCP_NEW_SYN_RECV;
        fill_tuple(&rec, &o, family, ev);
        ev.netns = sock_netns(listener);
    });
    0
}

#[tracepoint]
pub fn tcp_recv_rst(ctx: TracePointContext) -> u32 {
    let o: TupleOffsets = global!(OFFSETS.receive_reset);
    let rec = Record::copy(&ctx, o.len);
    let family: u16 = rec.get(o.family);
    let sk: u64 = rec.get(o.skaddr);
    emit(&ctx, kind::RESET_RECEIVED, sk, |ev| {
        // No state field in this tracepoint: read it from the socket.
        if sk != 0 {
            ev.newstate = read((sk + global!(OFFSETS.kernel.sock_state) as u64) as *const u8);
        }
        ev.aux = rec.get(o.aux);
        fill_tuple(&rec, &o, family, ev);
        ev.netns = sock_netns(sk);
    });
    0
}

#[tracepoint]
pub fn tcp_send_rst(ctx: TracePointContext) -> u32 {
    let o = global!(OFFSETS.send_reset);
    let rec = Record::copy(&ctx, o.len);
    let sk: u64 = rec.get(o.skaddr);
    emit(&ctx, kind::RESET_SENT, sk, |ev| {
        ev.newstate = rec.get::<i32>(o.state) as u8;
        ev.aux32 = rec.get(o.reason);
        // Addresses are sockaddr_in / sockaddr_in6 images: family, port (big endian), address.
        let family: u16 = rec.get(o.saddr);
        ev.family = family as u8;
        ev.sport = u16::from_be(rec.get(o.saddr + 2));
        ev.dport = u16::from_be(rec.get(o.daddr + 2));
        if family == AF_INET6 {
            rec.bytes::<16>(o.saddr + 8, &mut ev.saddr);
            rec.bytes::<16>(o.daddr + 8, &mut ev.daddr);
        } else {
            rec.bytes::<4>(o.saddr + 4, &mut ev.saddr);
            rec.bytes::<4>(o.daddr + 4, &mut ev.daddr);
        }
        ev.netns = if sk != 0 {
            sock_netns(sk)
        } else {
            // No socket (e.g. a SYN to a closed port): the namespace of the receiving device.
            let skb: u64 = rec.get(o.skbaddr);
            let dev: u64 = if skb != 0 {
                read((skb + global!(OFFSETS.kernel.skb_dev) as u64) as *const u8)
            } else {
                0
            };
            netns_at(dev, global!(OFFSETS.kernel.dev_net))
        };
    });
    0
}

/// TCP_SYN_RECV and TCP_ESTABLISHED, kernel numbering.
const TCP_SYN_RECV: i32 = 3;
const TCP_ESTABLISHED: i32 = 1;

/// sock_ops on the cgroup v2 root: sees what the state tracepoint cannot, the SYN's arrival
/// (a request socket has no state change), and the accepted socket becoming ESTABLISHED.
/// Returns 1 (allow) and leaves `reply` alone, so the kernel keeps its defaults.
#[sock_ops]
pub fn tcp_sockops(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    let op = ctx.op();
    let is_full = unsafe { core::ptr::read_volatile(&raw const (*ops).is_fullsock) } != 0;
    let kind = if op == BPF_SOCK_OPS_RWND_INIT && !is_full {
        // RWND_INIT runs for every request socket, SYN-cookie ones included.
        kind::SYN_RECEIVED
    } else if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        kind::PASSIVE_ESTABLISHED
    } else {
        return 1;
    };
    let aggregate = global!(CONFIG.aggregate) != 0;
    // An accepted socket's handshake, measured in the kernel, needs its address only for a
    // namespace filter (read then).
    let sk = if aggregate && kind == kind::PASSIVE_ESTABLISHED {
        0
    } else {
        sock_ops_sk(&ctx)
    };
    let cookie = unsafe { bpf_get_netns_cookie(ops.cast::<c_void>()) };
    let family = ctx.family() as u16;
    // For a SYN, the listener's queues at that moment: what a full accept or SYN queue looks like.
    let k = global!(OFFSETS.kernel);
    let queues: u32 = if kind == kind::SYN_RECEIVED
        && sk != 0
        && k.req_listener != u32::MAX
        && k.sock_ack_backlog != u32::MAX
        && k.icsk_syn_qlen != u32::MAX
    {
        let listener: u64 = read((sk + k.req_listener as u64) as *const u8);
        if listener != 0 {
            let accept: u32 = read((listener + k.sock_ack_backlog as u64) as *const u8);
            let syn: u32 = read((listener + k.icsk_syn_qlen as u64) as *const u8);
            (accept.min(0xffff) << 16) | syn.min(0xffff)
        } else {
            0
        }
    } else {
        0
    };
    if aggregate {
        sockops_aggregate(&ctx, kind, sk, cookie, family, queues);
        return 1;
    }
    emit(&ctx, kind, sk, |ev| {
        ev.aux = cookie;
        ev.aux32 = queues;
        ev.family = family as u8;
        ev.newstate = if kind == kind::SYN_RECEIVED {
            TCP_NEW_SYN_RECV
        } else {
            TCP_SYN_RECV as u8
        };
        ev.sport = ctx.local_port() as u16;
        // remote_port holds the big-endian port in its upper 16 bits on little-endian hosts.
        ev.dport = u16::from_be((ctx.remote_port() >> 16) as u16);
        if family == AF_INET6 {
            // The verifier only allows 4-byte loads of these context fields: no merged loads.
            for i in 0..4 {
                let l = unsafe { core::ptr::read_volatile(&raw const (*ops).local_ip6[i]) };
                let r = unsafe { core::ptr::read_volatile(&raw const (*ops).remote_ip6[i]) };
                ev.saddr[i * 4..i * 4 + 4].copy_from_slice(&l.to_ne_bytes());
                ev.daddr[i * 4..i * 4 + 4].copy_from_slice(&r.to_ne_bytes());
            }
        } else {
            ev.saddr[..4].copy_from_slice(&ctx.local_ip4().to_ne_bytes());
            ev.daddr[..4].copy_from_slice(&ctx.remote_ip4().to_ne_bytes());
        }
        ev.netns = sock_netns(sk);
    });
    1
}

/// The socket behind a sock_ops context. The context is really a `struct bpf_sock_ops_kern`;
/// reading its `sk` through probe_read yields a plain address (also for request sockets, which
/// `ctx->sk` hides), so the namespace can be read like everywhere else.
#[inline(always)]
fn sock_ops_sk(ctx: &SockOpsContext) -> u64 {
    read((ctx.ops as u64 + global!(OFFSETS.kernel.sock_ops_sk) as u64) as *const u8)
}

/// Aggregation mode, sock_ops: a SYN's arrival waits in `SYNS` (with the listener's queues added
/// to the port's histograms); the accepted socket's ESTABLISHED takes it out and times the
/// handshake.
#[inline(always)]
fn sockops_aggregate(
    ctx: &SockOpsContext,
    kind: u8,
    sk: u64,
    cookie: u64,
    family: u16,
    queues: u32,
) {
    let ops = ctx.ops;
    let mut key = SynKey {
        cookie,
        lport: ctx.local_port() as u16,
        rport: u16::from_be((ctx.remote_port() >> 16) as u16),
        family,
        ..SynKey::default()
    };
    if family == AF_INET6 {
        for i in 0..4 {
            key.local[i] = unsafe { core::ptr::read_volatile(&raw const (*ops).local_ip6[i]) };
            key.remote[i] = unsafe { core::ptr::read_volatile(&raw const (*ops).remote_ip6[i]) };
        }
    } else {
        key.local[0] = ctx.local_ip4();
        key.remote[0] = ctx.remote_ip4();
    }
    let mapped = family == AF_INET6 && is_v4_mapped(key.remote[0], key.remote[1], key.remote[2]);
    let netns = || sock_netns(if sk != 0 { sk } else { sock_ops_sk(ctx) });
    if !kernel_filter(family, mapped, key.lport, key.rport, netns) {
        return;
    }
    let tag = agg::syn_hash(&key);
    let Some(slot) = SYNS.get_ptr_mut((tag >> 32) as u32 & global!(CONFIG.syns_mask)) else {
        return;
    };
    let e = unsafe { &mut *slot };
    let now = unsafe { bpf_ktime_get_ns() };
    // A slot holds a waiting SYN until its handshake completes or it grows stale.
    let live = e.ts_ns != 0 && now.saturating_sub(e.ts_ns) < agg::SYN_MAX_AGE_NS;
    let ours = live && e.tag == tag;
    if kind == kind::SYN_RECEIVED {
        // (The port's block is a plain load from PORT_CACHE once the port has one.)
        let pblock = port_block(key.lport);
        if queues != 0 || sk != 0 {
            port_hist_add(pblock, agg::PORT_ACCEPT_QUEUE, u64::from(queues >> 16));
            port_hist_add(pblock, agg::PORT_SYN_QUEUE, u64::from(queues & 0xffff));
        }
        if ours {
            // A retransmitted SYN: the first one's time is kept.
            return;
        }
        if live {
            bump(counter::SYNS_EVICTED);
        }
        e.tag = tag;
        e.ts_ns = now;
        return;
    }
    // PASSIVE_ESTABLISHED_CB, on the accepted (full) socket.
    if !ours {
        bump(counter::PASSIVE_UNMATCHED);
        return;
    }
    let syn_ns = e.ts_ns;
    e.ts_ns = 0;
    let us = now.saturating_sub(syn_ns) / 1000;
    hist_add(agg::PASSIVE, us);
    port_hist_add(port_block(key.lport), agg::PORT_PASSIVE, us);
    // The socket's total_retrans from the context: the SYN-ACK retransmits, copied from the
    // request socket.
    let n = unsafe { core::ptr::read_volatile(&raw const (*ops).total_retrans) };
    bump_retransmits(counter::PASSIVE_RETRANS, n);
}

/// `::ffff:a.b.c.d`: an IPv4 peer on an IPv6 socket (words in network order).
#[inline(always)]
fn is_v4_mapped(w0: u32, w1: u32, w2: u32) -> bool {
    w0 == 0 && w1 == 0 && w2 == u32::from_be(0xffff)
}

/// The user's `--netns`, `-4`/`-6` and `--port` filters, applied in the kernel in aggregation
/// mode (in streaming mode userspace applies them). `netns` is only called when needed.
#[inline(always)]
fn kernel_filter(
    family: u16,
    mapped: bool,
    lport: u16,
    rport: u16,
    netns: impl FnOnce() -> u32,
) -> bool {
    let want = global!(CONFIG.family);
    if want != 0 {
        // A v4-mapped peer on an IPv6 socket is an IPv4 connection.
        let v6 = family == AF_INET6 && !mapped;
        if v6 != (want == AF_INET6) {
            return false;
        }
    }
    let n = global!(CONFIG.nports) as usize;
    if n != 0 {
        let mut hit = false;
        for i in 0..MAX_KERNEL_PORTS {
            if i < n {
                let p = global!(CONFIG.ports[i]);
                if p == lport || p == rport {
                    hit = true;
                }
            }
        }
        if !hit {
            return false;
        }
    }
    let ns = global!(CONFIG.netns);
    ns == 0 || netns() == ns
}

#[inline(always)]
fn hist_add(row: u32, v: u64) {
    let b = agg::bucket(v);
    if b >= agg::BUCKETS {
        return;
    }
    if let Some(h) = HISTS.get_ptr_mut(row) {
        // Per-CPU row, and tracing programs do not nest on one CPU.
        unsafe { (*h).0[b] += 1 };
    }
}

#[inline(always)]
fn port_hist_add(pblock: u16, metric: u16, v: u64) {
    if pblock == agg::PBLOCK_FULL || pblock == agg::PBLOCK_UNKNOWN {
        bump(counter::PORTS_FULL);
        return;
    }
    let b = agg::bucket(v);
    if b >= agg::BUCKETS {
        return;
    }
    let index = u32::from(pblock - 1) * agg::PORT_METRICS + u32::from(metric);
    let Some(row) = PORT_ROWS.get_ptr_mut(index) else {
        return;
    };
    // Shared by every CPU: an atomic add. BPF has 64-bit atomics only, so add to the 32-bit
    // count's half of its aligned 64-bit word (little endian: even buckets are the low half;
    // map values are 8-byte aligned). A low half would carry into the high one only after 2^32
    // counts in one bucket.
    let words = row.cast::<[u64; agg::ROW_LEN / 2]>();
    let word = unsafe { &raw mut (*words)[b / 2] };
    let one = 1u64 << ((b % 2) * 32);
    // (core's atomic types have no read-modify-write on this target; the intrinsic compiles to
    // the BPF atomic add.)
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            word, one,
        )
    };
}

/// An accepted socket's listening-port block, looked up on its first measurement.
#[inline(always)]
fn sock_pblock(s: &mut SockTimes) -> u16 {
    if s.pblock == agg::PBLOCK_UNKNOWN {
        s.pblock = port_block(s.port);
    }
    s.pblock
}

/// The block of `PORT_ROWS` that `port` has, claiming one on first use; plus one (what
/// `SockTimes::pblock` keeps), or `agg::PBLOCK_FULL` when none can be had.
///
/// A port's candidate blocks are a few slots from a hash of it; `PORT_OWNER` (inserts are
/// atomic) decides which port a block belongs to, so two CPUs seeing new ports at once never
/// share one. (An atomic counter would need BPF's fetch-and-add, which this target's
/// instruction set lacks.)
#[inline(always)]
fn port_block(port: u16) -> u16 {
    let cached = PORT_CACHE.get_ptr_mut(u32::from(port) / 4);
    let lane = usize::from(port % 4);
    if let Some(c) = cached {
        let b = unsafe { core::ptr::read_volatile(&raw const (*c)[lane]) };
        if b != 0 {
            return b;
        }
    }
    let b = port_block_slow(port);
    if b != agg::PBLOCK_FULL
        && let Some(c) = cached
    {
        // (A 16-bit store: other CPUs writing the entry's other ports are not disturbed.)
        unsafe { core::ptr::write_volatile(&raw mut (*c)[lane], b) };
    }
    b
}

/// `port_block` without the cache.
#[inline(always)]
fn port_block_slow(port: u16) -> u16 {
    if let Some(b) = unsafe { PORT_INDEX.get(port) } {
        return *b as u16 + 1;
    }
    let mask = global!(CONFIG.port_blocks).wrapping_sub(1);
    let h = u32::from(port).wrapping_mul(0x9e37_79b1) >> 16;
    for i in 0..PORT_PROBES {
        let block = h.wrapping_add(i) & mask;
        let owned = match PORT_OWNER.insert(block, port, BPF_NOEXIST as u64) {
            Ok(()) => true,
            // Every block has its port: nothing to probe for (ports past --max-ports).
            Err(e) if e == -E2BIG => break,
            Err(_) => (unsafe { PORT_OWNER.get(block) }) == Some(&port),
        };
        if owned {
            // Fails if another CPU gave this port a block meanwhile: that one is used, this
            // one stays empty (and taken).
            let _ = PORT_INDEX.insert(port, block, BPF_NOEXIST as u64);
            break;
        }
    }
    match unsafe { PORT_INDEX.get(port) } {
        Some(b) => *b as u16 + 1,
        None => agg::PBLOCK_FULL,
    }
}

/// Blocks a port may take (see `port_block`).
const PORT_PROBES: u32 = 8;
/// What a full preallocated hash map answers an insert.
const E2BIG: i32 = 7;

/// Counts a handshake under its number of SYN (or SYN-ACK) retransmits.
#[inline(always)]
fn count_retransmits(base: u32, sk: u64) {
    bump_retransmits(base, total_retrans(sk));
}

/// A new socket's `total_retrans`: the SYNs (or SYN-ACKs, copied from the request socket) it
/// took; 0 where the kernel lacks the member.
#[inline(always)]
fn total_retrans(sk: u64) -> u32 {
    let off = global!(OFFSETS.kernel.tcp_total_retrans);
    if sk != 0 && off != u32::MAX {
        read((sk + off as u64) as *const u8)
    } else {
        0
    }
}

/// Counts a handshake under its `n` retransmits.
#[inline(always)]
fn bump_retransmits(base: u32, n: u32) {
    bump(
        base + if n > counter::RETRANS_CAP {
            counter::RETRANS_CAP
        } else {
            n
        },
    );
}

const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;
const TCP_SYN_SENT: i32 = 2;
const TCP_FIN_WAIT1: i32 = 4;

/// A field of the socket behind a tp_btf pointer: a plain load the verifier checks against the
/// kernel's BTF (no helper call), at a loader-provided offset.
macro_rules! sk_field {
    ($sk:expr, $off:ident, $t:ty) => {{
        let off = global!(OFFSETS.kernel.$off) as usize;
        unsafe { core::ptr::read_volatile(($sk as *const u8).add(off) as *const $t) }
    }};
}

/// The socket's slot in `SOCKS` if it has one, else the first free slot it may take.
#[inline(always)]
fn sock_slot(cookie: u64) -> (Option<*mut SockTimes>, Option<*mut SockTimes>) {
    let mask = global!(CONFIG.socks_mask);
    let mut free = None;
    for i in 0..agg::SOCK_PROBES {
        if let Some(p) = SOCKS.get_ptr_mut((cookie as u32).wrapping_add(i) & mask) {
            let c = unsafe { (*p).cookie };
            if c == cookie {
                return (Some(p), None);
            }
            if c == 0 && free.is_none() {
                free = Some(p);
            }
        }
    }
    (None, free)
}

/// Gives `slot` to `cookie`: the cookie, then every other field zero, as four aligned words (a
/// struct assignment compiled to a call to a byte-by-byte memset).
#[inline(always)]
fn claim_slot(slot: *mut SockTimes, cookie: u64) -> *mut SockTimes {
    let w = slot.cast::<u64>();
    unsafe {
        core::ptr::write_volatile(w, cookie);
        for i in 1..SOCK_TIMES_WORDS {
            core::ptr::write_volatile(w.add(i), 0);
        }
    }
    slot
}

/// Of the slots `cookie` may use (all taken), the one whose socket entered FIN_WAIT1 first.
#[inline(always)]
fn oldest_fin_wait1(cookie: u64) -> Option<*mut SockTimes> {
    let mask = global!(CONFIG.socks_mask);
    let mut oldest = None;
    let mut oldest_ns = u64::MAX;
    for i in 0..agg::SOCK_PROBES {
        if let Some(p) = SOCKS.get_ptr_mut((cookie as u32).wrapping_add(i) & mask) {
            let (state, since) = unsafe { ((*p).state, (*p).since_ns) };
            if i32::from(state) == TCP_FIN_WAIT1 && since < oldest_ns {
                oldest = Some(p);
                oldest_ns = since;
            }
        }
    }
    oldest
}

/// A tp_btf socket's cookie: read from the socket once made (every change after its first),
/// else made by the helper (a call costs ~20 ns here, where each return is a mitigated one).
#[inline(always)]
fn sock_cookie(sk: *mut c_void) -> u64 {
    let off = global!(OFFSETS.kernel.sock_cookie);
    let cookie = if off != u32::MAX {
        sk_field!(sk, sock_cookie, u64)
    } else {
        0
    };
    if cookie != 0 {
        return cookie;
    }
    unsafe { bpf_get_socket_cookie(sk) }
}

/// `SockTimes` in aligned words, its cookie first (see `state_agg`).
const SOCK_TIMES_WORDS: usize = core::mem::size_of::<SockTimes>() / 8;
const _: () = assert!(
    core::mem::size_of::<SockTimes>().is_multiple_of(8)
        && core::mem::offset_of!(SockTimes, cookie) == 0
        && core::mem::align_of::<SockTimes>() == 8
);

/// Aggregation mode: every TCP state change, measured where it happens.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn state_agg(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if sk.is_null() || old == new {
        return 0;
    }
    if sk_field!(sk, sock_protocol, u16) != IPPROTO_TCP {
        return 0;
    }
    let family: u16 = sk_field!(sk, sock_family, u16);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let mut lport: u16 = sk_field!(sk, sock_num, u16);
    let rport: u16 = u16::from_be(sk_field!(sk, sock_dport, u16));
    if lport == 0 && new == TCP_CLOSE && global!(CONFIG.nports) != 0 {
        // An accepted socket gives its port back (inet_num = 0) just before this last
        // change; inet_sport still holds it (what the classic tracepoint reports).
        let off = global!(OFFSETS.kernel.inet_sport);
        if off != u32::MAX {
            lport = u16::from_be(read((sk as u64 + off as u64) as *const u8));
        }
    }
    let mapped = family == AF_INET6 && global!(CONFIG.family) != 0 && {
        let a = (sk as *const u8).wrapping_add(global!(OFFSETS.kernel.sock_v6_daddr) as usize);
        let w = |i: usize| unsafe { core::ptr::read_volatile((a as *const u32).add(i)) };
        is_v4_mapped(w(0), w(1), w(2))
    };
    if !kernel_filter(family, mapped, lport, rport, || sock_netns_btf(sk)) {
        return 0;
    }
    bump(counter::TRANSITIONS);
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => bump(counter::ACTIVE_OPENS),
        (TCP_LISTEN, TCP_SYN_RECV) => bump(counter::PASSIVE_OPENS),
        _ => {}
    }
    // A connection ends (listeners' closes are not connections); any socket leaves the table.
    let to_close = new == TCP_CLOSE;
    let closing = to_close && old != TCP_LISTEN;
    if closing {
        bump(counter::CLOSED);
    }
    let cookie = sock_cookie(sk);
    let st = match sock_slot(cookie) {
        (Some(p), _) => p,
        (None, Some(_)) if to_close => {
            // Older than the run and closing now: nothing to measure, nothing to keep.
            bump(counter::UNSEEN);
            return 0;
        }
        (None, Some(free)) => claim_slot(free, cookie),
        (None, None) if to_close => return 0,
        (None, None) => match oldest_fin_wait1(cookie) {
            // Every slot this cookie may use is taken. A socket in FIN_WAIT1 has little of its
            // life left to measure, and it is the state in which the tracepoint now and then
            // leaves a socket for good (its exit unreported), which would otherwise hold the
            // slot until the run ends.
            Some(p) => {
                bump(counter::SOCKS_EVICTED);
                claim_slot(p, cookie)
            }
            None => {
                bump(counter::SOCKS_UNTRACKED);
                return 0;
            }
        },
    };
    let s = unsafe { &mut *st };
    let now = unsafe { bpf_ktime_get_ns() };
    let born = (old == TCP_CLOSE && (new == TCP_SYN_SENT || new == TCP_LISTEN))
        || (old == TCP_LISTEN && new == TCP_SYN_RECV);
    if born {
        s.born_ns = now;
        s.flags = if old == TCP_LISTEN {
            agg::FLAG_PASSIVE
        } else {
            0
        };
        s.port = lport;
        s.pblock = agg::PBLOCK_UNKNOWN;
        if old == TCP_LISTEN && passive_by_srtt() {
            // Without sock_ops, the accept queue as this handshake completes (when the kernel
            // checks it for overflow): the child was just copied from its listener, and
            // sk_ack_backlog with it.
            let off = global!(OFFSETS.kernel.sock_ack_backlog);
            if off != u32::MAX {
                let queued = sk_field!(sk, sock_ack_backlog, u32);
                port_hist_add(sock_pblock(s), agg::PORT_ACCEPT_QUEUE, u64::from(queued));
            }
        }
    } else if s.since_ns != 0 && i32::from(s.state) == old {
        let us = now.saturating_sub(s.since_ns) / 1000;
        // A listener's time in LISTEN is its lifetime, not a connection's dwell.
        if old != TCP_LISTEN && (0..16).contains(&old) {
            hist_add(agg::DWELL + old as u32, us);
            if s.flags & agg::FLAG_PASSIVE != 0 && old < i32::from(agg::PORT_PASSIVE) {
                port_hist_add(sock_pblock(s), agg::PORT_DWELL + old as u16, us);
            }
        }
        if old == TCP_SYN_SENT && new == TCP_ESTABLISHED {
            hist_add(agg::ACTIVE, us);
            port_hist_add(port_block(rport), agg::PORT_ACTIVE_BY_REMOTE, us);
            count_retransmits(counter::ACTIVE_RETRANS, sk as u64);
        }
    } else {
        // Older than the run, or a transition the kernel skipped: no dwell to measure.
        bump(counter::UNSEEN);
    }
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED && passive_by_srtt() {
        let us = u64::from(srtt_handshake_us(sk as u64));
        hist_add(agg::PASSIVE, us);
        // (Not the slot's port: a slot made here, its birth unseen, has none.)
        port_hist_add(port_block(lport), agg::PORT_PASSIVE, us);
        count_retransmits(counter::PASSIVE_RETRANS, sk as u64);
    }
    if to_close {
        if closing && s.born_ns != 0 {
            hist_add(agg::LIFETIME, now.saturating_sub(s.born_ns) / 1000);
        }
        s.cookie = 0;
        return 0;
    }
    s.state = new as u8;
    s.since_ns = now;
    0
}

/// Streaming mode: every TCP state change as an event, read from the socket itself (what the
/// classic `sock/inet_sock_set_state` tracepoint reports, without building its record and
/// copying it, and guarded against recursion per program instead of against any other BPF
/// program running on the CPU).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn state_stream(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    if sk.is_null() || sk_field!(sk, sock_protocol, u16) != IPPROTO_TCP {
        return 0;
    }
    let family: u16 = sk_field!(sk, sock_family, u16);
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    emit(&ctx, kind::STATE, sk as u64, |ev| {
        ev.oldstate = old as u8;
        ev.newstate = new as u8;
        fill_from_sock(sk, family, ev);
    });
    0
}

/// Family, ports, addresses and namespace of a tp_btf socket, what the classic tcp tracepoints
/// copy into their records (`inet_sport`, `inet_saddr`): read from struct sock's own members,
/// which hold the same values for TCP (bind, connect and accept set both; ~25 ns less per event
/// than the helper call that types the socket as a tcp_sock to reach the inet_sock ones).
/// The exception is a socket's change to CLOSE once its port has been given back (`skc_num`
/// cleared): then `inet_sport` is read through that helper.
#[inline(always)]
fn fill_from_sock(sk: *mut c_void, family: u16, ev: &mut RawEvent) {
    ev.family = family as u8;
    let num = sk_field!(sk, sock_num, u16);
    ev.sport = if num != 0 {
        num
    } else {
        let tp = unsafe { bpf_skc_to_tcp_sock(sk) }.cast::<c_void>();
        if tp.is_null() {
            0
        } else {
            u16::from_be(sk_field!(tp, inet_sport, u16))
        }
    };
    ev.dport = u16::from_be(sk_field!(sk, sock_dport, u16));
    if family == AF_INET6 {
        let s = (sk as *const u8).wrapping_add(global!(OFFSETS.kernel.sock_v6_saddr) as usize);
        let d = (sk as *const u8).wrapping_add(global!(OFFSETS.kernel.sock_v6_daddr) as usize);
        for i in 0..4 {
            let sw = unsafe { core::ptr::read_volatile((s as *const u32).add(i)) };
            let dw = unsafe { core::ptr::read_volatile((d as *const u32).add(i)) };
            ev.saddr[i * 4..i * 4 + 4].copy_from_slice(&sw.to_ne_bytes());
            ev.daddr[i * 4..i * 4 + 4].copy_from_slice(&dw.to_ne_bytes());
        }
    } else {
        ev.saddr[..4].copy_from_slice(&sk_field!(sk, sock_rcv_saddr, u32).to_ne_bytes());
        ev.daddr[..4].copy_from_slice(&sk_field!(sk, sock_daddr, u32).to_ne_bytes());
    }
    ev.netns = sock_netns_btf(sk);
}

/// A retransmitted segment, through the BTF tracepoint (what `tcp_retransmit` reports from the
/// classic one, read from the socket instead of a record the kernel builds and the program
/// copies). The kernel skips a classic tracepoint program whenever any other kprobe or classic
/// tracepoint program, this tool's or another's, is running on that CPU (retransmit timers
/// fire in softirq, on top of whatever ran); a BTF tracepoint program is only guarded against
/// itself.
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn retransmit_btf(ctx: BtfTracePointContext) -> i32 {
    let sk: *mut c_void = ctx.arg(0);
    if sk.is_null() {
        return 0;
    }
    let family: u16 = sk_field!(sk, sock_family, u16);
    // The `err` argument exists where the classic tracepoint's record has it (Linux 6.17+); on
    // older kernels the branch is dead to the verifier (a frozen constant).
    let err: i32 = if global!(OFFSETS.retransmit_skb.aux) != NONE {
        ctx.arg(2)
    } else {
        0
    };
    emit(&ctx, kind::RETRANSMIT, sk as u64, |ev| {
        ev.newstate = sk_field!(sk, sock_state, u8);
        ev.aux32 = err as u32;
        fill_from_sock(sk, family, ev);
    });
    0
}

/// `sock_netns` for a tp_btf socket pointer: the verifier types `skc_net.net` as a `struct net`
/// pointer, so both reads are plain loads instead of two `bpf_probe_read_kernel` calls.
#[inline(always)]
fn sock_netns_btf(sk: *const c_void) -> u32 {
    let net: *const u8 = sk_field!(sk, sock_net, *const u8);
    if net.is_null() {
        return 0;
    }
    let off = global!(OFFSETS.kernel.net_inum) as usize;
    unsafe { core::ptr::read_volatile(net.add(off).cast::<u32>()) }
}

/// The srtt fallback's passive handshake of an accepted socket at SYN_RECV -> ESTABLISHED, µs:
/// the round trip the kernel measured from its first SYN-ACK (`tcp_sock.srtt_us >> 3`), or, if
/// SYN-ACKs were retransmitted on timeout (the kernel then measures no round trip from the
/// first one), the time since the first SYN-ACK that it notes in the new socket
/// (`total_rto_time`, ms; Linux 6.7+).
#[inline(always)]
fn srtt_handshake_us(sk: u64) -> u32 {
    let k = global!(OFFSETS.kernel);
    if k.tcp_total_rto != u32::MAX && k.tcp_total_rto_time != u32::MAX {
        let timeouts: u16 = read((sk + k.tcp_total_rto as u64) as *const u8);
        if timeouts != 0 {
            let ms: u32 = read((sk + k.tcp_total_rto_time as u64) as *const u8);
            return ms.saturating_mul(1000);
        }
    }
    let srtt: u32 = read((sk + k.tcp_srtt_us as u64) as *const u8);
    srtt >> 3
}

/// Fallback where no cgroup v2 is mounted: at SYN_RECV -> ESTABLISHED of an accepted socket,
/// report its handshake as the kernel measured it (`srtt_handshake_us`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn passive_rtt(ctx: BtfTracePointContext) -> i32 {
    let sk: u64 = ctx.arg::<*const c_void>(0) as u64;
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if old != TCP_SYN_RECV || new != TCP_ESTABLISHED || sk == 0 {
        return 0;
    }
    let protocol: u16 = read((sk + global!(OFFSETS.kernel.sock_protocol) as u64) as *const u8);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let us = srtt_handshake_us(sk);
    emit(&ctx, kind::PASSIVE_RTT, sk, |ev| {
        ev.aux32 = us;
        ev.aux = u64::from(total_retrans(sk));
        ev.newstate = TCP_SYN_RECV as u8;
        ev.netns = sock_netns(sk);
        // Family and local port (what per-port figures need); addresses stay unspecified.
        let family: u16 = read((sk + global!(OFFSETS.kernel.sock_family) as u64) as *const u8);
        ev.family = family as u8;
        ev.sport = read((sk + global!(OFFSETS.kernel.sock_num) as u64) as *const u8);
    });
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
