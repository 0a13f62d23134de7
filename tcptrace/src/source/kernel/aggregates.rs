//! Aggregation mode's reader: takes the kernel's per-CPU histograms and counters, and hands over
//! what changed since the previous read as one [`Folded`]. Also removes SYNs whose handshake
//! never completed from the kernel's table of waiting SYNs, counted.
use std::{collections::HashMap as StdHashMap, time::Duration};

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, MapData, PerCpuArray};
use tcptrace_common::{
    agg::{self, Buckets, PortKey, SynKey},
    counter,
};

use crate::folded::{BucketCounts, Folded, PortMetric, Row};

/// A SYN older than this has no handshake coming (the kernel gives up on a request socket
/// after tcp_synack_retries, about a minute by default).
const SYN_MAX_AGE: Duration = Duration::from_secs(180);
/// How often the table of waiting SYNs is swept.
const SWEEP_EVERY_NS: u64 = 10_000_000_000;

pub struct AggReader {
    hists: PerCpuArray<MapData, Buckets>,
    ports: HashMap<MapData, PortKey, Buckets>,
    syns: HashMap<MapData, SynKey, u64>,
    /// Per row (or port key), per CPU: the counts at the previous read.
    prev_rows: Vec<Vec<Buckets>>,
    prev_ports: StdHashMap<PortKey, Vec<Buckets>>,
    prev_counters: [u64; counter::COUNT as usize],
    last_sweep_ns: u64,
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<T>
where
    T::Error: std::fmt::Display,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("kernel object has no {name} map (build problem)"))?;
    T::try_from(map).map_err(|e| anyhow!("map {name}: {e}"))
}

/// What changed per bucket, summed over CPUs (each CPU's u32 counts wrap independently).
fn diff(now: &[Buckets], before: Option<&Vec<Buckets>>) -> BucketCounts {
    let mut out = Vec::new();
    for b in 0..agg::BUCKETS {
        let mut n = 0u64;
        for (cpu, row) in now.iter().enumerate() {
            let old = before.and_then(|v| v.get(cpu)).map_or(0, |r| r.0[b]);
            n += u64::from(row.0[b].wrapping_sub(old));
        }
        if n > 0 {
            out.push((b, n));
        }
    }
    out
}

impl AggReader {
    pub fn new(ebpf: &mut aya::Ebpf) -> anyhow::Result<AggReader> {
        Ok(AggReader {
            hists: take(ebpf, "HISTS")?,
            ports: take(ebpf, "PORT_HISTS")?,
            syns: take(ebpf, "SYNS")?,
            prev_rows: Vec::new(),
            prev_ports: StdHashMap::new(),
            prev_counters: [0; counter::COUNT as usize],
            last_sweep_ns: 0,
        })
    }

    /// Everything measured since the previous call. `counters` is the per-CPU `COUNTERS` map;
    /// `now_ns` the monotonic clock (for sweeping the SYN table).
    pub fn read(
        &mut self,
        counters: &PerCpuArray<MapData, u64>,
        now_ns: u64,
    ) -> anyhow::Result<Folded> {
        let mut f = Folded::default();
        for index in 0..agg::ROWS {
            let now: Vec<Buckets> = self
                .hists
                .get(&index, 0)
                .with_context(|| format!("reading kernel histogram row {index}"))?
                .to_vec();
            let i = index as usize;
            if self.prev_rows.len() <= i {
                self.prev_rows.resize(i + 1, Vec::new());
            }
            let counts = diff(&now, Some(&self.prev_rows[i]));
            self.prev_rows[i] = now;
            if let Some(row) = Row::from_index(index)
                && !counts.is_empty()
            {
                f.rows.push((row, counts));
            }
        }
        // Shared rows (one "CPU").
        let entries: Vec<(PortKey, Vec<Buckets>)> = self
            .ports
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, vec![v]))
            .collect();
        for (key, now) in entries {
            let counts = diff(&now, self.prev_ports.get(&key));
            self.prev_ports.insert(key, now);
            if let Some(metric) = PortMetric::from_kernel(key.metric)
                && !counts.is_empty()
            {
                f.ports.push((key.port, metric, counts));
            }
        }
        let mut totals = [0u64; counter::COUNT as usize];
        for (i, t) in totals.iter_mut().enumerate() {
            *t = counters
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
        }
        let prev = self.prev_counters;
        f.set_counters(|i| totals[i as usize].saturating_sub(prev[i as usize]));
        self.prev_counters = totals;
        if now_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_EVERY_NS {
            self.last_sweep_ns = now_ns;
            f.counts.syns_expired = self.sweep_syns(now_ns);
        }
        Ok(f)
    }

    /// Removes SYNs older than [`SYN_MAX_AGE`]; returns how many.
    fn sweep_syns(&mut self, now_ns: u64) -> u64 {
        let max = SYN_MAX_AGE.as_nanos() as u64;
        let stale: Vec<SynKey> = self
            .syns
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, ts)| now_ns.saturating_sub(*ts) > max)
            .map(|(k, _)| k)
            .collect();
        let mut removed = 0;
        for k in stale {
            if self.syns.remove(&k).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}
