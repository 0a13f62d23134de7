//! What the kernel measured itself (in-kernel aggregation), as userspace folds it in.
//!
//! In aggregation mode routine state changes never reach userspace as events: the kernel keeps
//! per-CPU log-linear histograms and counters (see `tcptrace_common::agg`). The kernel source
//! reads them every second and hands over the differences since its last read as one
//! [`Folded`]; [`Aggregator::fold`] adds them to the same HdrHistograms and counters the
//! streaming path fills, so every sink renders both modes alike. Pure: no I/O, no clock.
use serde::Serialize;
use tcptrace_common::{agg, counter};

use crate::{aggregate::Aggregator, event::TcpState, hist::Hist};

/// One histogram row the kernel keeps for all sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    Dwell(TcpState),
    Active,
    Passive,
    Lifetime,
}

impl Row {
    /// The row at `HISTS[index]`, if it is one.
    pub fn from_index(index: u32) -> Option<Row> {
        match index {
            agg::ACTIVE => Some(Row::Active),
            agg::PASSIVE => Some(Row::Passive),
            agg::LIFETIME => Some(Row::Lifetime),
            i if i < agg::ACTIVE => TcpState::from_kernel(i as u8).map(Row::Dwell),
            _ => None,
        }
    }
}

/// What a per-port histogram measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortMetric {
    /// Dwell of accepted sockets, by listening port.
    Dwell(TcpState),
    /// Passive handshakes, by listening port.
    Passive,
    /// Active handshakes, by remote port.
    ActiveByRemote,
    /// The listener's accept queue length at each SYN (a count).
    AcceptQueue,
    /// The listener's SYN queue length at each SYN (a count).
    SynQueue,
}

impl PortMetric {
    pub fn from_kernel(metric: u16) -> Option<PortMetric> {
        match metric {
            agg::PORT_PASSIVE => Some(PortMetric::Passive),
            agg::PORT_ACTIVE_BY_REMOTE => Some(PortMetric::ActiveByRemote),
            agg::PORT_ACCEPT_QUEUE => Some(PortMetric::AcceptQueue),
            agg::PORT_SYN_QUEUE => Some(PortMetric::SynQueue),
            m if m < agg::PORT_PASSIVE => TcpState::from_kernel(m as u8).map(PortMetric::Dwell),
            _ => None,
        }
    }
}

/// New counts per bucket: `(bucket index, count)`, non-zero only.
pub type BucketCounts = Vec<(usize, u64)>;

/// Kernel-side counters of aggregation mode (totals in [`Aggregator::in_kernel`], deltas in a
/// [`Folded`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounts {
    /// State changes measured in the kernel (after the filters).
    pub transitions: u64,
    /// Of those, changes of sockets whose previous state tcptrace had not seen (older than the
    /// run): no dwell measured.
    pub unseen: u64,
    /// Changes of sockets not tracked because every slot they may use in the bounded socket
    /// table held another live socket (raise --max-sockets).
    pub sockets_untracked: u64,
    /// Sockets in FIN_WAIT1 that gave their slot in the socket table to a new socket, every
    /// slot the new one may use being taken; their further changes are counted in `unseen`.
    pub sockets_evicted: u64,
    /// Samples not broken out per port because the per-port table was full (raise --max-ports).
    pub ports_full: u64,
    /// Waiting SYNs overwritten by another SYN in the same slot of the bounded SYN table
    /// (a SYN flood): their handshakes are not timed.
    pub syns_evicted: u64,
    /// Accepted sockets whose SYN was not seen (older than the run, SYN cookies, table full).
    pub passive_unmatched: u64,
}

impl KernelCounts {
    fn add(&mut self, o: &KernelCounts) {
        self.transitions += o.transitions;
        self.unseen += o.unseen;
        self.sockets_untracked += o.sockets_untracked;
        self.sockets_evicted += o.sockets_evicted;
        self.ports_full += o.ports_full;
        self.syns_evicted += o.syns_evicted;
        self.passive_unmatched += o.passive_unmatched;
    }
}

/// The kernel's measurements since the previous read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    pub rows: Vec<(Row, BucketCounts)>,
    pub ports: Vec<(u16, PortMetric, BucketCounts)>,
    pub counts: KernelCounts,
    pub active_opens: u64,
    pub passive_opens: u64,
    pub closed: u64,
    /// Handshakes by retransmit count (index = count, the last = that many or more).
    pub active_by_syn_retransmits: [u64; counter::RETRANS_CAP as usize + 1],
    pub passive_by_synack_retransmits: [u64; counter::RETRANS_CAP as usize + 1],
}

impl Folded {
    /// Reads the counter deltas out of `COUNTERS` differences, indexed as in
    /// `tcptrace_common::counter`.
    pub fn set_counters(&mut self, delta: impl Fn(u32) -> u64) {
        self.active_opens = delta(counter::ACTIVE_OPENS);
        self.passive_opens = delta(counter::PASSIVE_OPENS);
        self.closed = delta(counter::CLOSED);
        self.counts.transitions = delta(counter::TRANSITIONS);
        self.counts.unseen = delta(counter::UNSEEN);
        self.counts.sockets_untracked = delta(counter::SOCKS_UNTRACKED);
        self.counts.sockets_evicted = delta(counter::SOCKS_EVICTED);
        self.counts.ports_full = delta(counter::PORTS_FULL);
        self.counts.syns_evicted = delta(counter::SYNS_EVICTED);
        self.counts.passive_unmatched = delta(counter::PASSIVE_UNMATCHED);
        for i in 0..=counter::RETRANS_CAP {
            self.active_by_syn_retransmits[i as usize] = delta(counter::ACTIVE_RETRANS + i);
            self.passive_by_synack_retransmits[i as usize] = delta(counter::PASSIVE_RETRANS + i);
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Folded::default()
    }
}

/// The value a bucket stands for: its midpoint (exact below 64).
pub fn bucket_value(bucket: usize) -> u64 {
    let (low, high) = agg::bounds(bucket);
    low + (high - low) / 2
}

fn add_buckets(h: &mut Hist, counts: &BucketCounts) {
    for &(b, n) in counts {
        h.record_us_n(bucket_value(b), n);
    }
}

impl Aggregator {
    /// Adds what the kernel measured since its previous read.
    pub fn fold(&mut self, f: &Folded) {
        for (row, counts) in &f.rows {
            let h = match row {
                Row::Dwell(s) => self.dwell.entry(*s),
                Row::Active => &mut self.active,
                Row::Passive => &mut self.passive,
                Row::Lifetime => &mut self.lifetime,
            };
            add_buckets(h, counts);
        }
        for (port, metric, counts) in &f.ports {
            if *metric == PortMetric::ActiveByRemote {
                if let Some(h) = self.remote_port_hist(*port) {
                    add_buckets(h, counts);
                }
                continue;
            }
            let Some(p) = self.port_stats_mut(*port) else {
                continue;
            };
            let h = match metric {
                PortMetric::Dwell(s) => p.dwell.entry(*s),
                PortMetric::Passive => &mut p.handshake_passive,
                PortMetric::AcceptQueue => &mut p.accept_queue_at_syn,
                PortMetric::SynQueue => &mut p.syn_queue_at_syn,
                PortMetric::ActiveByRemote => unreachable!("handled above"),
            };
            add_buckets(h, counts);
        }
        self.active_opens += f.active_opens;
        self.passive_opens += f.passive_opens;
        self.closed += f.closed;
        self.matched += f.counts.transitions;
        for (n, count) in f.active_by_syn_retransmits.iter().enumerate() {
            if *count > 0 {
                *self.active_by_syn_retransmits.entry(n as u32).or_default() += count;
            }
        }
        for (n, count) in f.passive_by_synack_retransmits.iter().enumerate() {
            if *count > 0 {
                *self
                    .passive_by_synack_retransmits
                    .entry(n as u32)
                    .or_default() += count;
            }
        }
        self.in_kernel
            .get_or_insert_with(KernelCounts::default)
            .add(&f.counts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorConfig;

    #[test]
    fn buckets_cover_every_value_within_one_sixty_fourth() {
        for w in (0..5000u64).collect::<Vec<_>>().windows(2) {
            assert!(
                agg::bucket(w[0]) <= agg::bucket(w[1]),
                "buckets are monotonic"
            );
        }
        for v in (0..5000u64)
            .chain((1..=32).map(|s| (1u64 << s) - 1))
            .chain([123_456_789, u64::from(u32::MAX)])
        {
            let b = agg::bucket(v);
            assert!(b < agg::BUCKETS, "{v} -> {b}");
            let (low, high) = agg::bounds(b);
            assert!(
                low <= v && v < high,
                "{v} not in bucket {b} [{low}, {high})"
            );
            let mid = bucket_value(b);
            assert!(
                mid.abs_diff(v) as f64 <= v as f64 / 64.0 + 0.5,
                "{v}: midpoint {mid} too far"
            );
        }
        assert_eq!(agg::bucket(u64::from(u32::MAX)), agg::BUCKETS - 1);
        // Beyond 2^32 µs everything lands in the last bucket.
        assert_eq!(agg::bucket(u64::MAX), agg::BUCKETS - 1);
        // Every bucket is reachable and they tile the range without holes.
        for b in 1..agg::BUCKETS {
            assert_eq!(
                agg::bounds(b - 1).1,
                agg::bounds(b).0,
                "hole before bucket {b}"
            );
            assert_eq!(agg::bucket(agg::bounds(b).0), b);
        }
    }

    #[test]
    fn rows_and_port_metrics_map_to_states() {
        assert_eq!(Row::from_index(1), Some(Row::Dwell(TcpState::Established)));
        assert_eq!(Row::from_index(8), Some(Row::Dwell(TcpState::CloseWait)));
        assert_eq!(Row::from_index(agg::ACTIVE), Some(Row::Active));
        assert_eq!(Row::from_index(0), None);
        assert_eq!(Row::from_index(agg::ROWS), None);
        assert_eq!(
            PortMetric::from_kernel(agg::PORT_DWELL + 8),
            Some(PortMetric::Dwell(TcpState::CloseWait))
        );
        assert_eq!(
            PortMetric::from_kernel(agg::PORT_SYN_QUEUE),
            Some(PortMetric::SynQueue)
        );
        assert_eq!(PortMetric::from_kernel(99), None);
    }

    #[test]
    fn folding_fills_the_same_figures_as_streaming() {
        let mut a = Aggregator::new(AggregatorConfig {
            max_ports: 1,
            ..AggregatorConfig::default()
        });
        let ms = |v: u64| agg::bucket(v * 1000);
        let mut f = Folded {
            rows: vec![
                (Row::Active, vec![(ms(1000), 5)]),
                (
                    Row::Dwell(TcpState::CloseWait),
                    vec![(ms(200), 3), (ms(400), 1)],
                ),
            ],
            ports: vec![
                (
                    8080,
                    PortMetric::Dwell(TcpState::Established),
                    vec![(ms(10), 2)],
                ),
                (8080, PortMetric::AcceptQueue, vec![(agg::bucket(3), 4)]),
                // Beyond --max-ports 1: counted as overflow, not broken out.
                (9090, PortMetric::Passive, vec![(ms(1), 1)]),
                (443, PortMetric::ActiveByRemote, vec![(ms(1000), 5)]),
            ],
            active_opens: 5,
            closed: 4,
            ..Folded::default()
        };
        f.active_by_syn_retransmits[1] = 5;
        f.counts.transitions = 50;
        a.fold(&f);
        a.fold(&Folded::default());
        let s = a.active.summary();
        assert_eq!(s.count, 5);
        let p50 = s.p50_us.unwrap();
        assert!((984_000..=1_016_000).contains(&p50), "p50 {p50}");
        let cw = a.dwell.get(TcpState::CloseWait).unwrap().summary();
        assert_eq!(cw.count, 4);
        let port = &a.by_port[&8080];
        assert_eq!(port.dwell.get(TcpState::Established).unwrap().count(), 2);
        assert_eq!(port.accept_queue_at_syn.summary().max_us, Some(3));
        assert!(!a.by_port.contains_key(&9090));
        assert!(a.ports_overflow >= 1);
        assert_eq!(a.active_by_remote_port[&443].count(), 5);
        assert_eq!(a.active_by_syn_retransmits[&1], 5);
        assert_eq!((a.active_opens, a.closed, a.matched), (5, 4, 50));
        assert_eq!(a.in_kernel.unwrap().transitions, 50);
    }

    #[test]
    fn counters_are_read_by_their_kernel_index() {
        let mut f = Folded::default();
        f.set_counters(|i| u64::from(i) * 10);
        assert_eq!(f.active_opens, u64::from(counter::ACTIVE_OPENS) * 10);
        assert_eq!(f.counts.syns_evicted, u64::from(counter::SYNS_EVICTED) * 10);
        assert_eq!(
            f.passive_by_synack_retransmits[7],
            u64::from(counter::PASSIVE_RETRANS + 7) * 10
        );
    }
}
