//! `tcptrace report`: merges histogram logs (from `--hdr-log`, possibly from many hosts) by tag
//! over a chosen time range and prints percentile tables.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use hdrhistogram::{
    Histogram,
    serialization::{
        Deserializer,
        interval_log::{IntervalLogIterator, LogEntry},
    },
};

use crate::hist::{Hist, percentile_columns};

/// A bound of the time range: absolute (RFC 3339) or an offset from each log's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    At(SystemTime),
    Offset(Duration),
}

pub fn parse_bound(s: &str) -> Result<Bound, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Bound::Offset(d));
    }
    humantime::parse_rfc3339_weak(s)
        .map(Bound::At)
        .map_err(|_| {
            format!(
                "`{s}` is neither an offset (e.g. 30s, 5m) nor a time (e.g. 2026-11-22T10:00:00Z)"
            )
        })
}

/// Merged histograms by tag, and how many intervals went into each.
#[derive(Debug, Default)]
pub struct Merged {
    pub by_tag: BTreeMap<String, Hist>,
    pub intervals: u64,
    pub files: usize,
}

fn resolve(b: Option<Bound>, log_start: SystemTime) -> Option<SystemTime> {
    b.map(|b| match b {
        Bound::At(t) => t,
        Bound::Offset(d) => log_start + d,
    })
}

/// Adds one log's intervals in [from, to) to `merged`. Intervals are kept when they overlap the range.
pub fn merge_log(
    merged: &mut Merged,
    name: &str,
    text: &[u8],
    from: Option<Bound>,
    to: Option<Bound>,
    tag_filter: Option<&str>,
) -> anyhow::Result<()> {
    let mut base = Duration::ZERO;
    let mut start: Option<Duration> = None;
    let mut deser = Deserializer::new();
    let mut seen = 0u64;
    for entry in IntervalLogIterator::new(text) {
        let entry = entry.map_err(|e| anyhow!("{name}: not a histogram log ({e:?})"))?;
        match entry {
            LogEntry::BaseTime(t) => base = t,
            LogEntry::StartTime(t) => start = Some(t),
            LogEntry::Interval(iv) => {
                let tag = iv.tag().map(|t| t.as_str().to_string()).unwrap_or_default();
                if tag_filter.is_some_and(|f| !tag.contains(f)) {
                    continue;
                }
                let log_start = UNIX_EPOCH + start.unwrap_or(base);
                let iv_start = UNIX_EPOCH + base + iv.start_timestamp();
                let iv_end = iv_start + iv.duration();
                if resolve(from, log_start).is_some_and(|f| iv_end <= f)
                    || resolve(to, log_start).is_some_and(|t| iv_start >= t)
                {
                    continue;
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(iv.encoded_histogram())
                    .with_context(|| format!("{name}: bad base64 in interval for {tag}"))?;
                let h: Histogram<u64> = deser
                    .deserialize(&mut bytes.as_slice())
                    .map_err(|e| anyhow!("{name}: bad histogram for {tag}: {e:?}"))?;
                merged
                    .by_tag
                    .entry(tag)
                    .or_default()
                    .merge(&Hist::from_histogram(h));
                merged.intervals += 1;
                seen += 1;
            }
        }
    }
    if seen == 0 && start.is_none() && base == Duration::ZERO {
        bail!("{name}: not a histogram log (no header and no intervals)");
    }
    merged.files += 1;
    Ok(())
}

pub fn run(
    files: &[PathBuf],
    from: Option<Bound>,
    to: Option<Bound>,
    tag: Option<&str>,
) -> anyhow::Result<String> {
    let mut merged = Merged::default();
    for f in files {
        let text = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        merge_log(&mut merged, &f.display().to_string(), &text, from, to, tag)?;
    }
    Ok(render(&merged))
}

pub fn render(m: &Merged) -> String {
    let mut out = format!(
        "{} log(s), {} interval histograms merged\n{:<36} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        m.files, m.intervals, "METRIC", "COUNT", "P50", "P90", "P99", "P99.9", "MAX"
    );
    for (tag, h) in &m.by_tag {
        out.push_str(&format!("{tag:<36} {}\n", percentile_columns(h)));
    }
    if m.by_tag.is_empty() {
        out.push_str("(no intervals in the chosen range)\n");
    }
    out
}
