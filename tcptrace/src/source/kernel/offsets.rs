//! This kernel's layouts, gathered at load time for the kernel programs (`OFFSETS` global):
//! tracepoint field offsets from tracefs `format` files, struct member offsets from BTF.
//! Nothing is compiled in for one kernel version.
use anyhow::{Context as _, bail};
use tcptrace_common::{
    KernelOffsets, NONE, Offsets, RECORD_MAX, SendResetOffsets, SetStateOffsets, TupleOffsets,
};

use super::{
    btf::KernelBtf,
    tracefs::{TraceFs, TracepointFormat},
};

/// The tracepoints tcptrace attaches to: (program name in the object, category, tracepoint).
/// The streaming program for state changes (replaced by `state_agg` in aggregation mode).
pub const STATE_PROGRAM: &str = "sock_set_state";
pub const RETRANSMIT_PROGRAM: &str = "tcp_retransmit";

pub const TRACEPOINTS: [(&str, &str, &str); 5] = [
    ("sock_set_state", "sock", "inet_sock_set_state"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("tcp_retrans_synack", "tcp", "tcp_retransmit_synack"),
    ("tcp_send_rst", "tcp", "tcp_send_reset"),
    ("tcp_recv_rst", "tcp", "tcp_receive_reset"),
];

fn opt(v: Option<u16>) -> u16 {
    v.unwrap_or(NONE)
}

/// How much of a tracepoint's record the kernel programs copy: up to the end of its last field.
fn record_len(f: &TracepointFormat) -> anyhow::Result<u16> {
    let end = f
        .fields()
        .iter()
        .map(|d| d.offset + d.size)
        .max()
        .unwrap_or(0);
    if end > RECORD_MAX {
        bail!(
            "tracepoint {}/{} has a {end}-byte record; tcptrace copies at most {RECORD_MAX}: unsupported kernel layout",
            f.category,
            f.name
        );
    }
    Ok(end)
}

/// Offsets of the v4/v6 4-tuple fields most `tcp/*` tracepoints share.
fn tuple(
    f: &TracepointFormat,
    extra: Option<u16>,
    aux: Option<u16>,
) -> anyhow::Result<TupleOffsets> {
    Ok(TupleOffsets {
        skaddr: f.require("skaddr", &[8])?,
        extra: opt(extra),
        sport: f.require("sport", &[2])?,
        dport: f.require("dport", &[2])?,
        family: f.require("family", &[2])?,
        saddr: f.require("saddr", &[4])?,
        daddr: f.require("daddr", &[4])?,
        saddr_v6: f.require("saddr_v6", &[16])?,
        daddr_v6: f.require("daddr_v6", &[16])?,
        aux: opt(aux),
        len: record_len(f)?,
        _pad: 0,
    })
}

pub fn tracepoint_offsets(fs: &TraceFs) -> anyhow::Result<Offsets> {
    let set = fs.format("sock", "inet_sock_set_state")?;
    let set_state = SetStateOffsets {
        skaddr: set.require("skaddr", &[8])?,
        oldstate: set.require("oldstate", &[4])?,
        newstate: set.require("newstate", &[4])?,
        sport: set.require("sport", &[2])?,
        dport: set.require("dport", &[2])?,
        family: set.require("family", &[2])?,
        protocol: set.require("protocol", &[2])?,
        saddr: set.require("saddr", &[4])?,
        daddr: set.require("daddr", &[4])?,
        saddr_v6: set.require("saddr_v6", &[16])?,
        daddr_v6: set.require("daddr_v6", &[16])?,
        len: record_len(&set)?,
    };

    let rt = fs.format("tcp", "tcp_retransmit_skb")?;
    let retransmit_skb = tuple(
        &rt,
        Some(rt.require("state", &[4])?),
        rt.optional("err", &[4])?,
    )?;

    let syn = fs.format("tcp", "tcp_retransmit_synack")?;
    let retransmit_synack = tuple(&syn, Some(syn.require("req", &[8])?), None)?;

    let rr = fs.format("tcp", "tcp_receive_reset")?;
    let receive_reset = tuple(&rr, None, rr.optional("sock_cookie", &[8])?)?;

    let sr = fs.format("tcp", "tcp_send_reset")?;
    let send_reset = SendResetOffsets {
        skaddr: sr.require("skaddr", &[8])?,
        skbaddr: sr.require("skbaddr", &[8])?,
        state: sr.require("state", &[4])?,
        reason: opt(sr.optional("reason", &[4])?),
        // sockaddr_in6-sized images (kernel >= 5.x): family, port, address.
        saddr: sr.require("saddr", &[28])?,
        daddr: sr.require("daddr", &[28])?,
        len: record_len(&sr)?,
        _pad: 0,
    };

    Ok(Offsets {
        set_state,
        retransmit_skb,
        retransmit_synack,
        receive_reset,
        send_reset,
        _pad: 0,
        kernel: KernelOffsets::default(),
    })
}

pub fn kernel_offsets(btf: &KernelBtf) -> anyhow::Result<KernelOffsets> {
    let sized = |s: &str, path: &str, size: u32| -> anyhow::Result<u32> {
        let m = btf.member(s, path)?;
        if m.size != size {
            bail!(
                "BTF: struct {s} member {path} is {} bytes, expected {size}: unsupported kernel layout",
                m.size
            );
        }
        Ok(m.offset)
    };
    // The tracing programs read the task on the CPU directly where the kernel has the helper
    // that hands it over (Linux 5.11+; its id in the kernel's own enum says so, backports too).
    let task_btf = btf
        .enum_value("bpf_func_id", "BPF_FUNC_get_current_task_btf")
        .is_ok();
    let task = |path: &str, size: u32| {
        if task_btf {
            sized("task_struct", path, size).unwrap_or(u32::MAX)
        } else {
            u32::MAX
        }
    };
    Ok::<_, anyhow::Error>(KernelOffsets {
        sock_net: sized("sock", "__sk_common.skc_net", 8)?,
        sock_state: sized("sock", "__sk_common.skc_state", 1)?,
        net_inum: sized("net", "ns.inum", 4)?,
        skb_dev: sized("sk_buff", "dev", 8)?,
        dev_net: sized("net_device", "nd_net", 8)?,
        // Only the srtt fallback needs these; a kernel without them just lacks that fallback.
        sock_protocol: btf
            .member("sock", "sk_protocol")
            .map_or(u32::MAX, |m| m.offset),
        tcp_srtt_us: btf
            .member("tcp_sock", "srtt_us")
            .map_or(u32::MAX, |m| m.offset),
        sock_family: sized("sock", "__sk_common.skc_family", 2)?,
        sock_num: sized("sock", "__sk_common.skc_num", 2)?,
        sock_ops_sk: sized("bpf_sock_ops_kern", "sk", 8)?,
        // Queue lengths at SYN arrival are a bonus: a kernel without these members (u32::MAX)
        // just reports none.
        req_listener: sized("request_sock", "__req_common.skc_listener", 8).unwrap_or(u32::MAX),
        sock_ack_backlog: sized("sock", "sk_ack_backlog", 4).unwrap_or(u32::MAX),
        icsk_syn_qlen: sized("inet_connection_sock", "icsk_accept_queue.qlen", 4)
            .unwrap_or(u32::MAX),
        sock_dport: sized("sock", "__sk_common.skc_dport", 2)?,
        sock_v6_daddr: sized("sock", "__sk_common.skc_v6_daddr", 16)?,
        // Handshakes by retransmit count are a bonus (u32::MAX: all counted as 0).
        tcp_total_retrans: sized("tcp_sock", "total_retrans", 4).unwrap_or(u32::MAX),
        inet_sport: sized("inet_sock", "inet_sport", 2).unwrap_or(u32::MAX),
        sock_rcv_saddr: sized("sock", "__sk_common.skc_rcv_saddr", 4).unwrap_or(u32::MAX),
        sock_daddr: sized("sock", "__sk_common.skc_daddr", 4).unwrap_or(u32::MAX),
        sock_v6_saddr: sized("sock", "__sk_common.skc_v6_rcv_saddr", 16).unwrap_or(u32::MAX),
        // Before Linux 6.7 (u32::MAX): the srtt fallback has, for a handshake whose SYN-ACK was
        // retransmitted, only the round trip TCP timestamps give (README, What it measures).
        tcp_total_rto: sized("tcp_sock", "total_rto", 2).unwrap_or(u32::MAX),
        tcp_total_rto_time: sized("tcp_sock", "total_rto_time", 4).unwrap_or(u32::MAX),
        // Without them the programs ask the helpers (bpf_get_current_comm, _pid_tgid).
        task_comm: task("comm", 16),
        task_tgid: task("tgid", 4),
        task_pid: task("pid", 4),
        sock_cookie: sized("sock", "__sk_common.skc_cookie", 8).unwrap_or(u32::MAX),
    })
    .context("reading struct layouts from /sys/kernel/btf/vmlinux")
}
