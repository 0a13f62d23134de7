//! `--metrics-addr`: the figures in the Prometheus exposition format, served over HTTP at
//! `/metrics`, for the monitoring people already run.
//!
//! The main loop renders a [`MetricsSnapshot`] from the aggregator and the diagnosis every
//! `--interval`; a small HTTP thread encodes the latest one with `prometheus-client` on each
//! scrape. Label sets are bounded: ports (at most `--max-ports`), states, process names —
//! never one series per connection. HdrHistograms are exposed as classic Prometheus histograms
//! with fixed bucket bounds; `_sum` is count x mean (HdrHistogram keeps no exact sum).
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, anyhow};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{aggregate::Aggregator, diagnose::Health, hist::Hist, sink::summary::SourceTotals};

/// Bucket upper bounds, seconds: 50 µs to 1 h.
pub const BUCKETS: [f64; 21] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

type Labels = Vec<(String, String)>;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistValue {
    pub labels: Labels,
    pub sum: f64,
    pub count: u64,
    /// (upper bound in seconds, count in this bucket alone): the encoder accumulates them.
    pub buckets: Vec<(f64, u64)>,
}

impl HistValue {
    fn from_hist(labels: Labels, h: &Hist) -> HistValue {
        let hh = h.histogram();
        let count = hh.len();
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .map(|&b| {
                let us = (b * 1e6) as u64;
                let cumulative = if count == 0 {
                    0
                } else {
                    hh.count_between(0, us)
                };
                let n = cumulative.saturating_sub(below);
                below = cumulative.max(below);
                (b, n)
            })
            .collect();
        // Prometheus requires the +Inf bucket (equal to the count).
        buckets.push((f64::INFINITY, count.saturating_sub(below)));
        HistValue {
            labels,
            sum: if count == 0 {
                0.0
            } else {
                hh.mean() * count as f64 / 1e6
            },
            count,
            buckets,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Family<T> {
    pub name: &'static str,
    pub help: &'static str,
    pub values: Vec<(Labels, T)>,
}

/// Everything one scrape shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub histograms: Vec<(&'static str, &'static str, Vec<HistValue>)>,
    pub counters: Vec<Family<u64>>,
    pub gauges: Vec<Family<i64>>,
}

fn l(pairs: &[(&str, String)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl MetricsSnapshot {
    pub fn build(agg: &Aggregator, health: &Health, totals: &SourceTotals, now_ns: u64) -> Self {
        let k = agg.in_kernel.unwrap_or_default();
        let mut handshake = vec![HistValue::from_hist(
            l(&[("side", "active".into())]),
            &agg.active,
        )];
        for (port, p) in &agg.by_port {
            if !p.handshake_passive.is_empty() {
                handshake.push(HistValue::from_hist(
                    l(&[("side", "passive".into()), ("port", port.to_string())]),
                    &p.handshake_passive,
                ));
            }
        }
        let dwell = agg
            .dwell
            .iter()
            .map(|(s, h)| HistValue::from_hist(l(&[("state", s.name().into())]), h))
            .collect();
        let r = &agg.retransmits;
        let mut resets = Vec::new();
        for (dir, map) in [
            ("sent", &agg.resets_sent),
            ("received", &agg.resets_received),
        ] {
            for (state, n) in map.iter() {
                resets.push((
                    l(&[("direction", dir.into()), ("state", state.to_string())]),
                    *n,
                ));
            }
        }
        let listeners = health.listeners(&agg.synack_by_port);
        let addr = |ls: &crate::diagnose::ListenerReport| format!("{}:{}", ls.addr, ls.port);
        let mut leaks: std::collections::BTreeMap<String, i64> = Default::default();
        for p in health.leaks_by_process(now_ns) {
            *leaks
                .entry(p.comm.unwrap_or_else(|| "unknown".into()))
                .or_default() += p.count as i64;
        }
        let t = agg.table_stats();
        MetricsSnapshot {
            histograms: vec![
                (
                    "tcptrace_handshake_duration_seconds",
                    "TCP handshake latency: active (connect() to ESTABLISHED) and passive (SYN arrival to ESTABLISHED, by listening port)",
                    handshake,
                ),
                (
                    "tcptrace_state_duration_seconds",
                    "Time TCP sockets spent in each state before leaving it",
                    dwell,
                ),
            ],
            counters: vec![
                Family {
                    name: "tcptrace_retransmits",
                    help: "Retransmits by the state they happened in (syn, synack, data, fin)",
                    values: vec![
                        (l(&[("kind", "syn".into())]), r.syn),
                        (l(&[("kind", "synack".into())]), r.synack),
                        (l(&[("kind", "data".into())]), r.data),
                        (l(&[("kind", "fin".into())]), r.fin),
                    ],
                },
                Family {
                    name: "tcptrace_resets",
                    help: "TCP resets sent and received, by socket state (NO_SOCKET: no socket matched)",
                    values: resets,
                },
                Family {
                    name: "tcptrace_listen_drops",
                    help: "SYNs dropped by a listening socket (its drop counter) since tcptrace started",
                    values: listeners
                        .iter()
                        .map(|ls| (l(&[("listener", addr(ls))]), u64::from(ls.drops)))
                        .collect(),
                },
                Family {
                    name: "tcptrace_connections_opened",
                    help: "Connections opened: active (connect) and passive (accepted)",
                    values: vec![
                        (l(&[("side", "active".into())]), agg.active_opens),
                        (l(&[("side", "passive".into())]), agg.passive_opens),
                    ],
                },
                Family {
                    name: "tcptrace_connections_closed",
                    help: "Connections that reached CLOSE",
                    values: vec![(vec![], agg.closed)],
                },
                Family {
                    name: "tcptrace_events",
                    help: "Kernel events received by tcptrace",
                    values: vec![(vec![], totals.received)],
                },
                Family {
                    name: "tcptrace_events_lost",
                    help: "Kernel events dropped because the ring buffer was full",
                    values: vec![(vec![], totals.lost)],
                },
                Family {
                    name: "tcptrace_sockets_evicted",
                    help: "Sockets evicted from the bounded lifecycle table",
                    values: vec![(vec![], t.evicted)],
                },
                Family {
                    name: "tcptrace_kernel_transitions",
                    help: "State changes measured in the kernel (in-kernel aggregation)",
                    values: vec![(vec![], k.transitions)],
                },
                Family {
                    name: "tcptrace_kernel_unmeasured",
                    help: "In-kernel aggregation: what was not measured, by reason (socket_untracked, socket_evicted, syn_evicted, port_table_full, unseen_start)",
                    values: vec![
                        (
                            l(&[("reason", "socket_untracked".into())]),
                            k.sockets_untracked,
                        ),
                        (
                            l(&[("reason", "socket_evicted".into())]),
                            k.sockets_evicted,
                        ),
                        (l(&[("reason", "syn_evicted".into())]), k.syns_evicted),
                        (l(&[("reason", "port_table_full".into())]), k.ports_full),
                        (l(&[("reason", "unseen_start".into())]), k.unseen),
                    ],
                },
            ],
            gauges: vec![
                Family {
                    name: "tcptrace_close_wait_leaked_sockets",
                    help: "Sockets in CLOSE_WAIT longer than --close-wait-threshold, by process name",
                    values: leaks
                        .into_iter()
                        .map(|(comm, n)| (l(&[("comm", comm)]), n))
                        .collect(),
                },
                Family {
                    name: "tcptrace_listen_queue_length",
                    help: "Accept queue length of a listening socket at the last poll",
                    values: listeners
                        .iter()
                        .map(|ls| (l(&[("listener", addr(ls))]), i64::from(ls.queue_len)))
                        .collect(),
                },
                Family {
                    name: "tcptrace_listen_queue_limit",
                    help: "Accept queue limit of a listening socket (min(backlog, net.core.somaxconn))",
                    values: listeners
                        .iter()
                        .map(|ls| (l(&[("listener", addr(ls))]), i64::from(ls.backlog_limit)))
                        .collect(),
                },
                Family {
                    name: "tcptrace_time_wait_sockets",
                    help: "Sockets in TIME_WAIT at the last poll (per namespace, from /proc/net/sockstat)",
                    values: vec![(vec![], health.time_wait().count as i64)],
                },
                Family {
                    name: "tcptrace_tracked_sockets",
                    help: "Sockets in tcptrace's lifecycle table",
                    values: vec![(vec![], agg.tracked() as i64)],
                },
            ],
        }
    }
}

/// Encodes the latest snapshot on each scrape.
#[derive(Debug, Clone, Default)]
pub struct SnapshotCollector(pub Arc<Mutex<MetricsSnapshot>>);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snap = self.0.lock().map_err(|_| std::fmt::Error)?.clone();
        for (name, help, values) in &snap.histograms {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for v in values {
                m.encode_family(&v.labels)?
                    .encode_histogram::<Labels>(v.sum, v.count, &v.buckets, None)?;
            }
        }
        for f in &snap.counters {
            let mut m = encoder.encode_descriptor(f.name, f.help, None, MetricType::Counter)?;
            match f.values.as_slice() {
                // One unlabelled value: no `{}` after the name.
                [(labels, v)] if labels.is_empty() => ConstCounter::new(*v).encode(m)?,
                values => {
                    for (labels, v) in values {
                        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
                    }
                }
            }
        }
        for f in &snap.gauges {
            let mut m = encoder.encode_descriptor(f.name, f.help, None, MetricType::Gauge)?;
            match f.values.as_slice() {
                [(labels, v)] if labels.is_empty() => ConstGauge::new(*v).encode(m)?,
                values => {
                    for (labels, v) in values {
                        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Renders the exposition text for a snapshot.
pub fn render(snap: &MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(Arc::new(Mutex::new(
        snap.clone(),
    )))));
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The HTTP endpoint: binds now (so a bad address fails before tracing starts), serves on its
/// own thread until the process ends.
pub struct MetricsServer {
    pub shared: Arc<Mutex<MetricsSnapshot>>,
    pub addr: SocketAddr,
}

pub fn serve(addr: SocketAddr) -> anyhow::Result<MetricsServer> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("--metrics-addr {addr}: cannot listen ({e}): pick a free address"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .with_context(|| format!("--metrics-addr {addr}: not an IP address"))?;
    let shared = Arc::new(Mutex::new(MetricsSnapshot::default()));
    let mine = shared.clone();
    std::thread::Builder::new()
        .name("tcptrace-metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("").to_string();
                let resp = if path == "/metrics" && *req.method() == tiny_http::Method::Get {
                    let snap = mine.lock().map(|s| s.clone()).unwrap_or_default();
                    let body = render(&snap);
                    let ct = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
                    )
                    .ok();
                    let mut r = tiny_http::Response::from_string(body);
                    if let Some(ct) = ct {
                        r.add_header(ct);
                    }
                    r
                } else {
                    tiny_http::Response::from_string("tcptrace: see /metrics\n")
                        .with_status_code(404)
                };
                let _ = req.respond(resp);
            }
        })
        .context("starting the metrics thread")?;
    Ok(MetricsServer {
        shared,
        addr: bound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregate::AggregatorConfig, event::*};

    #[test]
    fn exposition_has_conventional_names_and_buckets() {
        let mut agg = Aggregator::new(AggregatorConfig::default());
        let ev = |ts, old, new| Event::test_state(ts, 1, old, new);
        agg.apply(&ev(0, TcpState::Close, TcpState::SynSent));
        agg.apply(&ev(2_000_000, TcpState::SynSent, TcpState::Established));
        let snap = MetricsSnapshot::build(
            &agg,
            &Health::new(Default::default()),
            &SourceTotals {
                received: 2,
                lost: 0,
                undecodable: 0,
            },
            0,
        );
        let text = render(&snap);
        assert!(
            text.contains("# TYPE tcptrace_handshake_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(
                "tcptrace_handshake_duration_seconds_bucket{le=\"0.0025\",side=\"active\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tcptrace_handshake_duration_seconds_bucket{le=\"0.001\",side=\"active\"} 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_handshake_duration_seconds_count{side=\"active\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tcptrace_handshake_duration_seconds_bucket{le=\"3600.0\",side=\"active\"} 1"
            ),
            "cumulative: {text}"
        );
        assert!(
            text.contains(
                "tcptrace_handshake_duration_seconds_bucket{le=\"+Inf\",side=\"active\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_retransmits_total{kind=\"syn\"} 0"),
            "{text}"
        );
        assert!(text.contains("tcptrace_events_lost_total 0"), "{text}");
        assert!(
            text.contains("tcptrace_kernel_unmeasured_total{reason=\"syn_evicted\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("tcptrace_state_duration_seconds_count{state=\"SYN_SENT\"} 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
