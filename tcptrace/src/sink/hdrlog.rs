//! Histogram dumps for capacity planning (`--hdr-log FILE`): every histogram as an HdrHistogram
//! interval log (V2 compressed, one tag per metric, one interval per `--interval`), readable by
//! HdrHistogram's own tools and by `tcptrace report`; at exit, a percentile distribution per
//! metric in `FILE.hgrm`.
//!
//! Intervals follow the events' kernel timestamps, not a wall-clock timer, so a replay of a
//! recording writes the same log the live run did.
use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use hdrhistogram::serialization::{
    V2DeflateSerializer,
    interval_log::{IntervalLogWriterBuilder, Tag},
};

use crate::{aggregate::Aggregator, hist::Hist, output, sink::WallClock};

pub struct HdrLog {
    out: BufWriter<File>,
    path: PathBuf,
    interval_ns: u64,
    start_ns: u64,
    next_ns: u64,
    /// Cumulative histograms at the end of the previous interval, by tag.
    last: BTreeMap<String, Hist>,
    serializer: V2DeflateSerializer,
    /// `FILE.hgrm`, opened at start (written at exit through this handle, which keeps working
    /// after --user).
    hgrm: File,
}

impl HdrLog {
    /// Creates the file now, so a bad path fails before tracing starts.
    pub fn create(path: &Path, interval: Duration) -> anyhow::Result<HdrLog> {
        let hgrm = output::create(&hgrm_path(path))?;
        Ok(HdrLog {
            hgrm,
            out: BufWriter::new(output::create(path)?),
            path: path.to_path_buf(),
            interval_ns: interval.as_nanos().max(1) as u64,
            start_ns: 0,
            next_ns: u64::MAX,
            last: BTreeMap::new(),
            serializer: V2DeflateSerializer::new(),
        })
    }

    /// Writes the header; `start_ns` is the kernel-clock start of observation.
    pub fn begin(&mut self, start_ns: u64, clock: &WallClock) -> anyhow::Result<()> {
        self.start_ns = start_ns;
        self.next_ns = start_ns.saturating_add(self.interval_ns);
        let wall = clock.to_system_time(start_ns);
        IntervalLogWriterBuilder::new()
            .add_comment("tcptrace histogram log: values in microseconds; tags name the metric")
            .with_start_time(wall)
            .with_base_time(wall)
            .begin_log_with(&mut self.out, &mut self.serializer)
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.out
            .write_all(b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n")
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    /// Closes every interval that ended at or before `ts_ns`. Call before applying an event.
    #[inline]
    pub fn advance(&mut self, agg: &Aggregator, ts_ns: u64) -> anyhow::Result<()> {
        while ts_ns >= self.next_ns {
            let end = self.next_ns;
            self.write_interval(agg, end - self.interval_ns, end)?;
            self.next_ns = end.saturating_add(self.interval_ns);
        }
        Ok(())
    }

    fn write_interval(&mut self, agg: &Aggregator, from_ns: u64, to_ns: u64) -> anyhow::Result<()> {
        let mut writer = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.out, &mut self.serializer)
            .with_context(|| format!("writing {}", self.path.display()))?;
        let start = Duration::from_nanos(from_ns.saturating_sub(self.start_ns));
        let len = Duration::from_nanos(to_ns.saturating_sub(from_ns));
        for (tag, cumulative) in agg.histograms() {
            let mut delta = cumulative.histogram().clone();
            if let Some(prev) = self.last.get(&tag) {
                // Histograms only grow, so the previous one is always a subset.
                let _ = delta.subtract(prev.histogram());
            }
            if delta.is_empty() {
                continue;
            }
            let t = Tag::new(&tag).ok_or_else(|| anyhow!("invalid histogram tag {tag}"))?;
            writer
                .write_histogram(&delta, start, len, Some(t))
                .map_err(|e| anyhow!("writing {}: {e}", self.path.display()))?;
            self.last.insert(tag, cumulative.clone());
        }
        Ok(())
    }

    /// Writes the last (partial) interval and the percentile distributions.
    pub fn finish(mut self, agg: &Aggregator, end_ns: u64) -> anyhow::Result<()> {
        self.advance(agg, end_ns)?;
        let from = self.next_ns - self.interval_ns;
        if end_ns > from {
            self.write_interval(agg, from, end_ns)?;
        }
        self.out
            .flush()
            .with_context(|| format!("writing {}", self.path.display()))?;
        let mut text = String::new();
        for (tag, h) in agg.histograms() {
            text.push_str(&h.percentile_distribution(&tag));
            text.push('\n');
        }
        let mut f = &self.hgrm;
        f.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", hgrm_path(&self.path).display()))
    }
}

pub fn hgrm_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".hgrm");
    PathBuf::from(s)
}
