//! Aggregation mode's reader: takes the kernel's per-CPU histograms and counters, and hands over
//! what changed since the previous read as one [`Folded`].
use std::collections::HashMap as StdHashMap;

use anyhow::{Context as _, anyhow};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use tcptrace_common::{
    agg::{self, Buckets, PortKey},
    counter,
};

use crate::folded::{BucketCounts, Folded, PortMetric, Row};

pub struct AggReader {
    hists: PerCpuArray<MapData, Buckets>,
    /// Port -> its block of `agg::PORT_METRICS` rows in `port_rows`.
    port_index: HashMap<MapData, u16, u32>,
    port_rows: Array<MapData, Buckets>,
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
            port_index: take(ebpf, "PORT_INDEX")?,
            port_rows: take(ebpf, "PORT_ROWS")?,
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
        // Shared rows (one "CPU"), by port block.
        let blocks: Vec<(u16, u32)> = self.port_index.iter().filter_map(Result::ok).collect();
        for (port, block) in blocks {
            for metric in 0..agg::PORT_METRICS as u16 {
                let Some(m) = PortMetric::from_kernel(metric) else {
                    continue;
                };
                let index = block * agg::PORT_METRICS + u32::from(metric);
                let now = vec![
                    self.port_rows
                        .get(&index, 0)
                        .with_context(|| format!("reading kernel port row {index}"))?,
                ];
                let key = PortKey { port, metric };
                let counts = diff(&now, self.prev_ports.get(&key));
                self.prev_ports.insert(key, now);
                if !counts.is_empty() {
                    f.ports.push((port, m, counts));
                }
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
