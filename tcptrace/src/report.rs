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
/// Most distinct metrics `report` keeps (each costs a histogram).
const MAX_TAGS: usize = 4096;
/// Most counters one histogram may declare: what hdrhistogram would allocate before reading a
/// single count. tcptrace's own (1 µs to 1 h, 3 digits) need about 47 000.
const MAX_COUNTERS: u64 = 1 << 20;

/// A V2 histogram's header declares its range and precision, from which the deserializer sizes
/// its counts array: a crafted header can make that gigabytes. Reads the header (inflating only
/// its first bytes) and refuses ranges beyond [`MAX_COUNTERS`].
fn check_declared_size(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Read as _;
    const COMPRESSED_V2: u32 = 0x1c84_9304;
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    // The cookie's 0x10 bit is a word-size flag.
    if bytes.len() < 8 || be32(bytes) & !0x10 != COMPRESSED_V2 {
        // Not compressed V2: the deserializer reports what it is.
        return Ok(());
    }
    let mut header = [0u8; 40];
    flate2::read::ZlibDecoder::new(&bytes[8..])
        .read_exact(&mut header)
        .map_err(|e| anyhow!("damaged compressed histogram ({e})"))?;
    let sigfig = be32(&header[12..]);
    let lowest = u64::from_be_bytes(header[16..24].try_into().expect("8 bytes"));
    let highest = u64::from_be_bytes(header[24..32].try_into().expect("8 bytes"));
    if sigfig > 5 || lowest == 0 || highest < 2 * lowest {
        bail!("damaged histogram header (digits {sigfig}, range {lowest}..{highest})");
    }
    // As hdrhistogram sizes it: sub-buckets for the precision, one bucket per doubling.
    let sub_buckets = (2 * 10u64.pow(sigfig)).next_power_of_two();
    let doublings = 64 - (highest / lowest).leading_zeros() as u64;
    let counters = (doublings + 1) * sub_buckets;
    if counters > MAX_COUNTERS {
        bail!(
            "declares {counters} counters (range {lowest}..{highest}, {sigfig} digits), more than {MAX_COUNTERS}: not a tcptrace log, refusing to allocate it"
        );
    }
    Ok(())
}

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
                check_declared_size(&bytes)
                    .with_context(|| format!("{name}: histogram for {tag}"))?;
                if !merged.by_tag.contains_key(&tag) && merged.by_tag.len() >= MAX_TAGS {
                    bail!(
                        "{name}: more than {MAX_TAGS} distinct tags: not a tcptrace log (use --tag to pick metrics)"
                    );
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
    use std::io::Write as _;

    /// A compressed V2 histogram whose header declares `sigfig` digits over `lowest..highest`.
    fn crafted(sigfig: u32, lowest: u64, highest: u64) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&0x1c84_9313u32.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // payload length
        h.extend_from_slice(&0u32.to_be_bytes()); // normalizing offset
        h.extend_from_slice(&sigfig.to_be_bytes());
        h.extend_from_slice(&lowest.to_be_bytes());
        h.extend_from_slice(&highest.to_be_bytes());
        h.extend_from_slice(&1f64.to_bits().to_be_bytes());
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&h).unwrap();
        let z = z.finish().unwrap();
        let mut out = 0x1c84_9314u32.to_be_bytes().to_vec();
        out.extend_from_slice(&(z.len() as u32).to_be_bytes());
        out.extend_from_slice(&z);
        out
    }

    #[test]
    fn hostile_histogram_headers_are_refused_before_allocating() {
        let mut own = Hist::new();
        own.record_us(1234);
        let mut bytes = Vec::new();
        V2DeflateSerializer::new()
            .serialize(own.histogram(), &mut bytes)
            .unwrap();
        check_declared_size(&bytes).expect("tcptrace's own histograms pass");
        let err = check_declared_size(&crafted(5, 1, u64::MAX / 2)).unwrap_err();
        assert!(format!("{err}").contains("refusing to allocate"), "{err}");
        assert!(check_declared_size(&crafted(9, 1, 1000)).is_err());
        assert!(check_declared_size(&crafted(3, 0, 1000)).is_err());
        assert!(check_declared_size(&bytes[..10]).is_err(), "truncated");
    }
}
