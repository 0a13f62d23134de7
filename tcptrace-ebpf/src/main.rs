//! tcptrace's kernel side: five thin tracepoint programs, one ring buffer.
//!
//! Each program copies what its tracepoint reports into a fixed-size [`RawEvent`] and nothing
//! more: no maps keyed by socket, no policy. Userspace owns interpretation. Field offsets are not
//! compiled in: the loader reads them from tracefs and BTF and hands them over in `OFFSETS`.
//!
//! Wake-ups are batched: a record is submitted with `BPF_RB_NO_WAKEUP` unless enough bytes are
//! waiting (`CONFIG.wakeup_bytes`); the reader also drains on its own short timer. Waking the
//! reader once per event is what makes per-event tools collapse at high connection rates.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::bpf_probe_read_kernel,
    },
    bindings::{BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RWND_INIT},
    helpers::generated::bpf_get_netns_cookie,
    macros::{btf_tracepoint, map, sock_ops, tracepoint},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, SockOpsContext, TracePointContext},
};
use aya_log_ebpf::debug;
use tcptrace_common::{
    AF_INET, AF_INET6, Config, IPPROTO_TCP, NONE, Offsets, RawEvent, TupleOffsets, counter, kind,
};

/// Overridden by the loader with this kernel's offsets.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets::ZERO;

/// Overridden by the loader.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::ZERO;

/// The one event stream to userspace. Its size is set by the loader (`--ring-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 24, 0);

/// Per-CPU counters indexed by `tcptrace_common::counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// `TCP_NEW_SYN_RECV`: the state of a request socket (what a SYN-ACK retransmit belongs to).
const TCP_NEW_SYN_RECV: u8 = 12;

/// Reads a loader-provided global without letting the compiler assume its compile-time value.
macro_rules! global {
    ($($path:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const $($path)+) }
    };
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

/// Reads a tracepoint field at a loader-provided offset.
#[inline(always)]
fn field<T: Default>(ctx: &TracePointContext, offset: u16) -> T {
    if offset == NONE {
        return T::default();
    }
    read(unsafe { (ctx.as_ptr() as *const u8).add(offset as usize) })
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

/// Reserves a slot, fills the fields every event shares, lets `fill` add the rest, submits.
#[inline(always)]
fn emit<C: aya_ebpf::EbpfContext>(ctx: &C, kind: u8, sk: u64, fill: impl FnOnce(&mut RawEvent)) {
    let Some(mut entry) = EVENTS.reserve::<RawEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let ev = RawEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr: sk,
        aux: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        netns: 0,
        aux32: 0,
        sport: 0,
        dport: 0,
        family: 0,
        kind,
        oldstate: 0,
        newstate: 0,
    };
    let slot = entry.write(ev);
    fill(slot);
    if global!(CONFIG.debug) != 0 {
        debug!(ctx, "tcptrace: kind {} sk {:x}", kind, sk);
    }
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= global!(CONFIG.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}

/// Fills family, ports and addresses from the separate v4/v6 fields most tcp tracepoints share.
#[inline(always)]
fn fill_tuple(ctx: &TracePointContext, o: &TupleOffsets, family: u16, ev: &mut RawEvent) {
    ev.family = family as u8;
    ev.sport = field(ctx, o.sport);
    ev.dport = field(ctx, o.dport);
    copy_addrs(ctx, family, o.saddr, o.daddr, o.saddr_v6, o.daddr_v6, ev);
}

#[inline(always)]
fn copy_addrs(
    ctx: &TracePointContext,
    family: u16,
    saddr: u16,
    daddr: u16,
    saddr_v6: u16,
    daddr_v6: u16,
    ev: &mut RawEvent,
) {
    let base = ctx.as_ptr() as *const u8;
    let (s, d, len) = if family == AF_INET6 {
        (saddr_v6, daddr_v6, 16)
    } else {
        (saddr, daddr, 4)
    };
    unsafe {
        read_into(ev.saddr.as_mut_ptr(), len, base.add(s as usize));
        read_into(ev.daddr.as_mut_ptr(), len, base.add(d as usize));
    }
}

#[tracepoint]
pub fn sock_set_state(ctx: TracePointContext) -> u32 {
    let o = &OFFSETS.set_state;
    // Also fires for SCTP and MPTCP sockets: keep TCP only, before reserving anything.
    let protocol: u16 = field(&ctx, global!(o.protocol));
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let family: u16 = field(&ctx, global!(o.family));
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let sk: u64 = field(&ctx, global!(o.skaddr));
    emit(&ctx, kind::STATE, sk, |ev| {
        let old: i32 = field(&ctx, global!(o.oldstate));
        let new: i32 = field(&ctx, global!(o.newstate));
        ev.oldstate = old as u8;
        ev.newstate = new as u8;
        ev.family = family as u8;
        ev.sport = field(&ctx, global!(o.sport));
        ev.dport = field(&ctx, global!(o.dport));
        copy_addrs(
            &ctx,
            family,
            global!(o.saddr),
            global!(o.daddr),
            global!(o.saddr_v6),
            global!(o.daddr_v6),
            ev,
        );
        ev.netns = sock_netns(sk);
    });
    0
}

#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    let o: TupleOffsets = global!(OFFSETS.retransmit_skb);
    let family: u16 = field(&ctx, o.family);
    let sk: u64 = field(&ctx, o.skaddr);
    emit(&ctx, kind::RETRANSMIT, sk, |ev| {
        let state: i32 = field(&ctx, o.extra);
        ev.newstate = state as u8;
        let err: i32 = field(&ctx, o.aux);
        ev.aux32 = err as u32;
        fill_tuple(&ctx, &o, family, ev);
        ev.netns = sock_netns(sk);
    });
    0
}

#[tracepoint]
pub fn tcp_retrans_synack(ctx: TracePointContext) -> u32 {
    let o: TupleOffsets = global!(OFFSETS.retransmit_synack);
    let family: u16 = field(&ctx, o.family);
    let listener: u64 = field(&ctx, o.skaddr);
    emit(&ctx, kind::RETRANSMIT_SYNACK, listener, |ev| {
        ev.aux = field(&ctx, o.extra);
        ev.newstate = TCP_NEW_SYN_RECV;
        fill_tuple(&ctx, &o, family, ev);
        ev.netns = sock_netns(listener);
    });
    0
}

#[tracepoint]
pub fn tcp_recv_rst(ctx: TracePointContext) -> u32 {
    let o: TupleOffsets = global!(OFFSETS.receive_reset);
    let family: u16 = field(&ctx, o.family);
    let sk: u64 = field(&ctx, o.skaddr);
    emit(&ctx, kind::RESET_RECEIVED, sk, |ev| {
        // No state field in this tracepoint: read it from the socket.
        if sk != 0 {
            ev.newstate = read((sk + global!(OFFSETS.kernel.sock_state) as u64) as *const u8);
        }
        ev.aux = field(&ctx, o.aux);
        fill_tuple(&ctx, &o, family, ev);
        ev.netns = sock_netns(sk);
    });
    0
}

#[tracepoint]
pub fn tcp_send_rst(ctx: TracePointContext) -> u32 {
    let o = &OFFSETS.send_reset;
    let sk: u64 = field(&ctx, global!(o.skaddr));
    emit(&ctx, kind::RESET_SENT, sk, |ev| {
        let state: i32 = field(&ctx, global!(o.state));
        ev.newstate = state as u8;
        let reason: u32 = field(&ctx, global!(o.reason));
        ev.aux32 = reason;
        // Addresses are sockaddr_in / sockaddr_in6 images: family, port (big endian), address.
        let s = global!(o.saddr);
        let d = global!(o.daddr);
        let family: u16 = field(&ctx, s);
        ev.family = family as u8;
        let sport: u16 = field(&ctx, s + 2);
        let dport: u16 = field(&ctx, d + 2);
        ev.sport = u16::from_be(sport);
        ev.dport = u16::from_be(dport);
        let base = ctx.as_ptr() as *const u8;
        let (addr_off, len) = if family == AF_INET6 { (8, 16) } else { (4, 4) };
        unsafe {
            read_into(ev.saddr.as_mut_ptr(), len, base.add((s + addr_off) as usize));
            read_into(ev.daddr.as_mut_ptr(), len, base.add((d + addr_off) as usize));
        }
        ev.netns = if sk != 0 {
            sock_netns(sk)
        } else {
            // No socket (e.g. a SYN to a closed port): the namespace of the receiving device.
            let skb: u64 = field(&ctx, global!(o.skbaddr));
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
    // The context is really a `struct bpf_sock_ops_kern`; reading its `sk` through
    // probe_read yields a plain address (also for request sockets, which `ctx->sk` hides), so
    // the namespace can be read like everywhere else.
    let sk: u64 = read((ops as u64 + global!(OFFSETS.kernel.sock_ops_sk) as u64) as *const u8);
    let cookie = unsafe { bpf_get_netns_cookie(ops.cast::<c_void>()) };
    let family = ctx.family() as u16;
    emit(&ctx, kind, sk, |ev| {
        ev.aux = cookie;
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

/// Fallback where no cgroup v2 is mounted: at SYN_RECV -> ESTABLISHED of an accepted socket,
/// report the SYN-ACK round trip the kernel measured (`tcp_sock.srtt_us >> 3`).
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
    let srtt: u32 = read((sk + global!(OFFSETS.kernel.tcp_srtt_us) as u64) as *const u8);
    emit(&ctx, kind::PASSIVE_RTT, sk, |ev| {
        ev.aux32 = srtt >> 3;
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
