//! The JSON summary (`--json-summary FILE`): every figure of the run in one document, written
//! at exit atomically. Key names are a stable interface (see the README): later versions add
//! keys, never change what one means.
use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    aggregate::{Aggregator, Retransmits},
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
    pub events: Events,
    pub sockets: Sockets,
    pub handshake: Handshake,
    pub dwell: BTreeMap<&'static str, HistSummary>,
    pub lifetime: HistSummary,
    pub connections: Connections,
    pub retransmits: Retransmits,
    pub resets: Resets,
    pub by_port: BTreeMap<String, PortSummary>,
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (n as f64 / secs * 100.0).round() / 100.0
    } else {
        0.0
    }
}

impl Summary {
    pub fn build(agg: &Aggregator, totals: &SourceTotals) -> Summary {
        let secs = agg.duration_ns() as f64 / 1e9;
        let t = agg.table_stats();
        Summary {
            duration_s: (secs * 1000.0).round() / 1000.0,
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
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data: serialisation cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
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
            &SourceTotals {
                received: 5,
                lost: 1,
                undecodable: 0,
            },
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
        for k in ["count", "min_us", "mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
            assert!(v["handshake"]["active"].get(k).is_some(), "H.{k}");
        }
        for k in ["syn", "synack", "data", "fin", "total"] {
            assert!(v["retransmits"].get(k).is_some(), "retransmits.{k}");
        }
        for k in ["sent", "received"] {
            assert!(v["resets"].get(k).is_some(), "resets.{k}");
        }
        assert!(v["dwell"].is_object());
        assert!(v["by_port"].is_object());
    }
}
