//! Aggregation mode's reader: takes the kernel's per-CPU histograms and counters, and hands over
//! what changed since the previous read as one [`Folded`].
use std::collections::HashMap as StdHashMap;

use anyhow::{Context as _, anyhow};
use aya::maps::{HashMap, MapData, PerCpuArray};
use tcptrace_common::{
    agg::{self, Buckets, PortKey},
    counter,
};

use crate::folded::{BucketCounts, Folded, PortMetric, Row};

pub struct AggReader {
    hists: PerCpuArray<MapData, Buckets>,
    ports: HashMap<MapData, PortKey, Buckets>,
    /// Per row (or port key), per CPU: the counts at the previous read.
    prev_rows: Vec<Vec<Buckets>>,
    prev_ports: StdHashMap<PortKey, Vec<Buckets>>,
    prev_counters: [u64; counter::COUNT as usize],
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
            prev_rows: Vec::new(),
            prev_ports: StdHashMap::new(),
            prev_counters: [0; counter::COUNT as usize],
        })
    }

    /// Everything measured since the previous call. `counters` is the per-CPU `COUNTERS` map.
    pub fn read(&mut self, counters: &PerCpuArray<MapData, u64>) -> anyhow::Result<Folded> {
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
        Ok(f)
    }
}
