//! Latency histograms: HdrHistograms in microseconds, 1 µs to 1 h, 3 significant digits.
//!
//! One type for every duration tcptrace measures, so the live view, the JSON summary, the
//! interval log and `report` all agree on units and precision.
use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest trackable value: one hour, in microseconds.
pub const MAX_US: u64 = 3_600_000_000;
pub const SIGFIG: u8 = 3;

#[derive(Clone, Debug)]
pub struct Hist {
    h: Histogram<u64>,
    /// Values above one hour, recorded as one hour and counted here.
    pub saturated: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist::new()
    }
}

impl PartialEq for Hist {
    fn eq(&self, other: &Self) -> bool {
        self.h == other.h && self.saturated == other.saturated
    }
}

/// The figures every histogram is summarised by (JSON `H`). Empty histograms have nulls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HistSummary {
    pub count: u64,
    pub min_us: Option<u64>,
    pub mean_us: Option<f64>,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
}

impl Hist {
    pub fn new() -> Hist {
        Hist {
            // Bounds are constants within hdrhistogram's limits: this cannot fail.
            h: Histogram::new_with_bounds(1, MAX_US, SIGFIG).expect("valid histogram bounds"),
            saturated: 0,
        }
    }

    pub fn from_histogram(h: Histogram<u64>) -> Hist {
        Hist { h, saturated: 0 }
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.record_us(ns / 1_000);
    }

    pub fn record_us(&mut self, us: u64) {
        self.record_us_n(us, 1);
    }

    /// `n` values of `us` (a bucket folded from the kernel's histograms).
    pub fn record_us_n(&mut self, us: u64, n: u64) {
        if n == 0 {
            return;
        }
        if us > MAX_US {
            self.saturated += n;
        }
        // Values are clamped to the bounds first, so this cannot fail.
        let _ = self.h.record_n(us.min(MAX_US), n);
    }

    pub fn count(&self) -> u64 {
        self.h.len()
    }

    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.h
    }

    /// Adds another histogram's counts (merging hosts or intervals).
    pub fn merge(&mut self, other: &Hist) {
        // Same bounds everywhere, so add cannot fail; values beyond are already clamped.
        let _ = self.h.add(&other.h);
        self.saturated += other.saturated;
    }

    pub fn summary(&self) -> HistSummary {
        if self.h.is_empty() {
            return HistSummary::default();
        }
        let q = |p: f64| Some(self.h.value_at_quantile(p));
        HistSummary {
            count: self.h.len(),
            min_us: Some(self.h.min()),
            mean_us: Some((self.h.mean() * 10.0).round() / 10.0),
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: Some(self.h.max()),
        }
    }

    /// Percentile distribution text in HdrHistogram's classic layout (value, percentile, total
    /// count, 1/(1-percentile)), values in milliseconds.
    pub fn percentile_distribution(&self, title: &str) -> String {
        let mut out = format!("# {title}\n");
        out.push_str(&format!(
            "{:>12} {:>14} {:>10} {:>14}\n\n",
            "Value(ms)", "Percentile", "TotalCount", "1/(1-Percentile)"
        ));
        if self.h.is_empty() {
            out.push_str("#[no values]\n");
            return out;
        }
        for v in self.h.iter_quantiles(5) {
            let p = v.quantile_iterated_to();
            let inv = if p < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - p))
            } else {
                format!("{:>14}", "inf")
            };
            out.push_str(&format!(
                "{:>12.3} {:>14.12} {:>10} {}\n",
                v.value_iterated_to() as f64 / 1000.0,
                p,
                v.count_since_last_iteration(),
                inv
            ));
        }
        out.push_str(&format!(
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]\n",
            self.h.mean() / 1000.0,
            self.h.stdev() / 1000.0,
            self.h.max() as f64 / 1000.0,
            self.h.len()
        ));
        out
    }
}

/// COUNT P50 P90 P99 P99.9 MAX as right-aligned columns (the live view and `report`).
pub fn percentile_columns(h: &Hist) -> String {
    let s = h.summary();
    format!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        s.count,
        human_us(s.p50_us),
        human_us(s.p90_us),
        human_us(s.p99_us),
        human_us(s.p999_us),
        human_us(s.max_us)
    )
}

/// `1.23ms`, `850µs`, `2.1s`: short human durations for the live view.
pub fn human_us(us: Option<u64>) -> String {
    match us {
        None => "-".to_string(),
        Some(us) if us < 1_000 => format!("{us}µs"),
        Some(us) if us < 1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        Some(us) if us < 120_000_000 => format!("{:.2}s", us as f64 / 1e6),
        Some(us) => format!("{:.1}m", us as f64 / 6e7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut h = Hist::new();
        for us in 1..=1000u64 {
            h.record_us(us);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.min_us, Some(1));
        assert_eq!(s.max_us, Some(1000));
        assert_eq!(s.p50_us, Some(500));
        assert_eq!(s.p90_us, Some(900));
        assert_eq!(s.p99_us, Some(990));
        assert_eq!(s.mean_us, Some(500.5));
    }

    #[test]
    fn saturates_beyond_an_hour() {
        let mut h = Hist::new();
        h.record_ns(u64::MAX);
        assert_eq!(h.saturated, 1);
        assert!(h.summary().max_us.unwrap() >= MAX_US);
        assert_eq!(Hist::new().summary(), HistSummary::default());
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Hist::new();
        let mut b = Hist::new();
        a.record_us(10);
        b.record_us(20);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.summary().max_us, Some(20));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_us(Some(850)), "850µs");
        assert_eq!(human_us(Some(1_230)), "1.23ms");
        assert_eq!(human_us(Some(2_100_000)), "2.10s");
        assert_eq!(human_us(None), "-");
    }
}
