//! The JSON summary (`--json-summary FILE`): every figure of the run in one document, written
//! at exit atomically. Key names are a stable interface (see the README): later versions add
//! keys, never change what one means.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    aggregate::{Aggregator, Retransmits},
    diagnose::{Health, Leak, LeaksByProcess, ListenerReport, TimeWait, reset_meaning},
    hist::HistSummary,
};

/// Counts that come from the source rather than the aggregator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceTotals {
    /// Events decoded (before filtering).
    pub received: u64,
    /// Events the kernel dropped because the ring buffer was full.
    pub lost: u64,
    /// Records that did not decode.
    pub undecodable: u64,
}

#[derive(Serialize)]
pub struct Events {
    pub received: u64,
    pub lost: u64,
    pub undecodable: u64,
    /// Events that passed the filters and were measured.
    pub matched: u64,
}

#[derive(Serialize)]
pub struct Sockets {
    pub tracked: usize,
    pub evicted: u64,
    pub mismatched: u64,
    pub out_of_order: u64,
    pub pending_syns: usize,
    pub pending_syns_evicted: u64,
    pub ports_overflow: u64,
}

#[derive(Serialize)]
pub struct Handshake {
    pub active: HistSummary,
    pub passive: HistSummary,
    pub passive_method: &'static str,
    pub active_by_syn_retransmits: BTreeMap<String, u64>,
    pub passive_by_synack_retransmits: BTreeMap<String, u64>,
    pub active_by_remote_port: BTreeMap<String, HistSummary>,
}

#[derive(Serialize)]
pub struct Connections {
    pub active_opens: u64,
    pub passive_opens: u64,
    pub closed: u64,
    pub opened_per_s: f64,
    pub closed_per_s: f64,
}

#[derive(Serialize)]
pub struct Resets {
    pub sent: u64,
    pub received: u64,
    pub sent_by_state: BTreeMap<&'static str, u64>,
    pub received_by_state: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
pub struct PortSummary {
    pub handshake_passive: HistSummary,
    pub dwell: BTreeMap<&'static str, HistSummary>,
}

#[derive(Serialize)]
pub struct Summary {
    pub duration_s: f64,
    /// `kernel` (routine transitions measured in the kernel) or `user` (every event streamed).
    pub aggregation: &'static str,
    /// Aggregation mode's own counts (null when streaming).
    pub in_kernel: Option<crate::folded::KernelCounts>,
    pub events: Events,
    pub sockets: Sockets,
    pub handshake: Handshake,
    pub dwell: BTreeMap<&'static str, HistSummary>,
    pub lifetime: HistSummary,
    pub connections: Connections,
    pub retransmits: Retransmits,
    pub resets: Resets,
    pub by_port: BTreeMap<String, PortSummary>,
    pub listeners: Vec<Listener>,
    pub close_wait_leaks: Vec<Leak>,
    pub close_wait_leaks_by_process: Vec<LeaksByProcess>,
    pub time_wait: TimeWait,
    pub fin_wait2_timeouts: u64,
    /// Destinations whose SYNs were retransmitted, most first.
    pub syn_retransmits_by_destination: Vec<crate::diagnose::RemoteCount>,
    /// Resets sent and received, by the state they happened in (`NO_SOCKET`: sent for a
    /// segment that matched no socket).
    pub resets_by_state: BTreeMap<&'static str, u64>,
    pub kernel_counters: BTreeMap<&'static str, i64>,
    pub sysctls: BTreeMap<&'static str, String>,
    /// Every finding, one sentence each, most important first.
    pub diagnosis: Vec<String>,
}

#[derive(Serialize)]
pub struct Listener {
    #[serde(flatten)]
    pub report: ListenerReport,
    pub synack_retransmits: u64,
    pub handshake_passive: HistSummary,
    /// Accept queue length seen by each arriving SYN (sock_ops).
    pub accept_queue_at_syn: QueueSummary,
    /// SYN queue length (request sockets awaiting their final ACK) seen by each arriving SYN.
    pub syn_queue_at_syn: QueueSummary,
    /// The SYN queue's limit: the same as the accept queue's (`sk_max_ack_backlog`).
    pub syn_queue_limit: u32,
}

/// Lengths (counts) sampled at each SYN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct QueueSummary {
    pub samples: u64,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
}

impl QueueSummary {
    fn of(h: Option<&crate::hist::Hist>) -> QueueSummary {
        let Some(h) = h else {
            return QueueSummary::default();
        };
        let s = h.summary();
        QueueSummary {
            samples: s.count,
            p50: s.p50_us,
            p99: s.p99_us,
            max: s.max_us,
        }
    }
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 100.0).round() / 100.0
    } else {
        0.0
    }
}

impl Summary {
    pub fn build(agg: &Aggregator, health: &Health, totals: &SourceTotals, now_ns: u64) -> Summary {
        let secs = agg.duration_ns() as f64 / 1e9;
        let t = agg.table_stats();
        let listeners: Vec<Listener> = health
            .listeners(&agg.synack_by_port)
            .into_iter()
            .map(|report| {
                let port = agg.by_port.get(&report.port);
                Listener {
                    synack_retransmits: agg.synack_by_port.get(&report.port).copied().unwrap_or(0),
                    handshake_passive: port
                        .map(|p| p.handshake_passive.summary())
                        .unwrap_or_default(),
                    accept_queue_at_syn: QueueSummary::of(port.map(|p| &p.accept_queue_at_syn)),
                    syn_queue_at_syn: QueueSummary::of(port.map(|p| &p.syn_queue_at_syn)),
                    syn_queue_limit: report.backlog_limit,
                    report,
                }
            })
            .collect();
        let mut resets_by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (state, n) in agg.resets_sent.iter().chain(agg.resets_received.iter()) {
            *resets_by_state.entry(state).or_default() += n;
        }
        let leaks = health.leaks(now_ns);
        let by_process = health.leaks_by_process(now_ns);
        let time_wait = health.time_wait();
        let diagnosis = diagnosis(agg, health, &listeners, &by_process, &time_wait);
        Summary {
            duration_s: (secs * 1000.0).round() / 1000.0,
            aggregation: if agg.in_kernel.is_some() {
                "kernel"
            } else {
                "user"
            },
            in_kernel: agg.in_kernel,
            events: Events {
                received: totals.received,
                lost: totals.lost,
                undecodable: totals.undecodable,
                matched: agg.matched,
            },
            sockets: Sockets {
                tracked: agg.tracked(),
                evicted: t.evicted,
                mismatched: t.mismatched,
                out_of_order: t.out_of_order,
                pending_syns: agg.pending_syns(),
                pending_syns_evicted: agg.pending_evicted,
                ports_overflow: agg.ports_overflow,
            },
            handshake: Handshake {
                active: agg.active.summary(),
                passive: agg.passive.summary(),
                passive_method: agg.config().passive_method.name(),
                active_by_syn_retransmits: agg
                    .active_by_syn_retransmits
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                passive_by_synack_retransmits: agg
                    .passive_by_synack_retransmits
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                active_by_remote_port: agg
                    .active_by_remote_port
                    .iter()
                    .map(|(p, h)| (p.to_string(), h.summary()))
                    .collect(),
            },
            dwell: agg.dwell.summaries(),
            lifetime: agg.lifetime.summary(),
            connections: Connections {
                active_opens: agg.active_opens,
                passive_opens: agg.passive_opens,
                closed: agg.closed,
                opened_per_s: per_s(agg.active_opens + agg.passive_opens, secs),
                closed_per_s: per_s(agg.closed, secs),
            },
            retransmits: agg.retransmits,
            resets: Resets {
                sent: agg.resets_sent.values().sum(),
                received: agg.resets_received.values().sum(),
                sent_by_state: agg.resets_sent.clone(),
                received_by_state: agg.resets_received.clone(),
            },
            by_port: agg
                .by_port
                .iter()
                .map(|(p, s)| {
                    (
                        p.to_string(),
                        PortSummary {
                            handshake_passive: s.handshake_passive.summary(),
                            dwell: s.dwell.summaries(),
                        },
                    )
                })
                .collect(),
            listeners,
            close_wait_leaks: leaks,
            close_wait_leaks_by_process: by_process,
            time_wait,
            fin_wait2_timeouts: health.fin_wait2_timeouts,
            syn_retransmits_by_destination: syn_destinations(agg),
            resets_by_state,
            kernel_counters: health.counter_deltas(),
            sysctls: health.sysctls.clone(),
            diagnosis,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data: serialisation cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

fn syn_destinations(agg: &Aggregator) -> Vec<crate::diagnose::RemoteCount> {
    let mut v: Vec<crate::diagnose::RemoteCount> = agg
        .syn_retransmits_by_destination
        .iter()
        .map(|(a, n)| crate::diagnose::RemoteCount {
            raddr: a.ip().to_string(),
            rport: a.port(),
            count: *n,
        })
        .collect();
    v.sort_by_key(|d| std::cmp::Reverse(d.count));
    v
}

/// The findings in plain words, each naming the socket or process, the number, and the knob or
/// behaviour behind it.
fn diagnosis(
    agg: &Aggregator,
    health: &Health,
    listeners: &[Listener],
    leaks: &[LeaksByProcess],
    tw: &TimeWait,
) -> Vec<String> {
    let mut out = Vec::new();
    for l in listeners {
        let (Some(max), limit) = (l.syn_queue_at_syn.max, l.syn_queue_limit) else {
            continue;
        };
        if limit > 0 && max * 4 >= u64::from(limit) * 3 {
            out.push(format!(
                "listener {}:{}: SYN queue reached {max} of its limit {limit} (half-open connections awaiting the final ACK): a SYN flood, or clients whose final ACKs are lost; net.ipv4.tcp_syncookies={} keeps serving when it is full",
                l.report.addr,
                l.report.port,
                health.sysctls.get("net.ipv4.tcp_syncookies").map_or("?", String::as_str)
            ));
        }
    }
    for l in listeners.iter().filter(|l| l.report.diagnosis != "ok") {
        let who = match (&l.report.comm, l.report.pid) {
            (Some(c), Some(p)) => format!(" ({c}[{p}])"),
            _ => String::new(),
        };
        out.push(format!(
            "listener {}:{}{who}: {}",
            l.report.addr, l.report.port, l.report.diagnosis
        ));
    }
    for p in leaks {
        let who = match (&p.comm, p.pid) {
            (Some(c), Some(pid)) => format!("{c}[{pid}]"),
            _ => "an unknown process".to_string(),
        };
        out.push(format!(
            "{who} holds {} sockets in CLOSE_WAIT{}: the peer closed and the application never called close() (a leak)",
            p.count,
            if p.growing { ", and the number is growing" } else { "" }
        ));
    }
    out.extend(tw.port_exhaustion.iter().cloned());
    if health.fin_wait2_timeouts > 0 {
        out.push(format!(
            "{} connections timed out in FIN_WAIT2 (net.ipv4.tcp_fin_timeout): the peer never closed its side",
            health.fin_wait2_timeouts
        ));
    }
    if agg.retransmits.syn > 0 {
        let worst: Vec<String> = syn_destinations(agg)
            .iter()
            .take(3)
            .map(|d| format!("{}:{} ({})", d.raddr, d.rport, d.count))
            .collect();
        out.push(format!(
            "{} SYNs retransmitted, most to {}: those destinations are slow to answer or drop SYNs (a full accept queue there, a firewall, or loss); each costs >= 1 s",
            agg.retransmits.syn,
            worst.join(", ")
        ));
    }
    for (state, n) in &agg.resets_received {
        out.push(format!(
            "{n} resets received in {state}: {}",
            reset_meaning(state, true)
        ));
    }
    for (state, n) in &agg.resets_sent {
        out.push(format!(
            "{n} resets sent in {state}: {}",
            reset_meaning(state, false)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorConfig;

    #[test]
    fn has_the_documented_keys() {
        let mut agg = Aggregator::new(AggregatorConfig::default());
        agg.start(0);
        agg.finish(2_000_000_000);
        let s = Summary::build(
            &agg,
            &Health::new(Default::default()),
            &SourceTotals {
                received: 5,
                lost: 1,
                undecodable: 0,
            },
            2_000_000_000,
        );
        let v: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["events"]["received"], 5);
        assert_eq!(v["events"]["lost"], 1);
        for k in ["tracked", "evicted"] {
            assert!(v["sockets"].get(k).is_some(), "sockets.{k}");
        }
        for k in ["active", "passive", "passive_method"] {
            assert!(v["handshake"].get(k).is_some(), "handshake.{k}");
        }
        assert_eq!(v["handshake"]["passive_method"], "sock_ops");
        for k in [
            "count", "min_us", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
        ] {
            assert!(v["handshake"]["active"].get(k).is_some(), "H.{k}");
        }
        for k in ["syn", "synack", "data", "fin", "total"] {
            assert!(v["retransmits"].get(k).is_some(), "retransmits.{k}");
        }
        for k in ["sent", "received"] {
            assert!(v["resets"].get(k).is_some(), "resets.{k}");
        }
        assert!(v["dwell"].is_object());
        for k in [
            "listeners",
            "close_wait_leaks",
            "time_wait",
            "fin_wait2_timeouts",
            "resets_by_state",
            "kernel_counters",
            "sysctls",
            "diagnosis",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["by_port"].is_object());
    }
}
