//! Where measurements and events go: renderers only, no policy about what is measured.
pub mod events;

use std::time::{SystemTime, UNIX_EPOCH};

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time, using one offset taken
/// when tracing starts (so a clock step during the run does not reorder events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer, valid clock id.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// The kernel's monotonic clock now (what `bpf_ktime_get_ns` returns).
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

impl WallClock {
    pub fn now() -> WallClock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        WallClock {
            offset_ns: real - mono,
        }
    }

    /// A fixed offset (recordings carry theirs).
    pub fn with_offset(offset_ns: i128) -> WallClock {
        WallClock { offset_ns }
    }

    pub fn offset_ns(&self) -> i128 {
        self.offset_ns
    }

    pub fn to_system_time(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        UNIX_EPOCH + std::time::Duration::from_nanos(ns as u64)
    }

    /// RFC 3339, UTC, microseconds: `2026-11-22T01:02:03.123456Z`.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.to_system_time(mono_ns)).to_string()
    }
}

/// [`WallClock::rfc3339`] for a stream of nearby timestamps: the date and time of day are
/// formatted once per second, the microseconds appended. Same text.
#[derive(Default)]
pub struct Rfc3339Cache {
    second: Option<u64>,
    prefix: String,
}

impl Rfc3339Cache {
    pub fn write(&mut self, clock: &WallClock, mono_ns: u64, out: &mut Vec<u8>) {
        // Integer arithmetic per event; the calendar only once per second.
        let ns = (mono_ns as i128 + clock.offset_ns).clamp(0, u64::MAX as i128) as u64;
        let secs = ns / 1_000_000_000;
        if self.second != Some(secs) {
            // `YYYY-MM-DDTHH:MM:SSZ`: keep all but the `Z`.
            let t = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let full = humantime::format_rfc3339_seconds(t).to_string();
            self.prefix = full.trim_end_matches('Z').to_string();
            self.second = Some(secs);
        }
        out.extend_from_slice(self.prefix.as_bytes());
        let micros = (ns % 1_000_000_000 / 1000) as u32;
        let mut digits = [b'0'; 6];
        let mut m = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
        out.push(b'.');
        out.extend_from_slice(&digits);
        out.push(b'Z');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_rfc3339_is_the_same_text() {
        let c = WallClock::with_offset(1_700_000_000_000_000_000);
        let mut cache = Rfc3339Cache::default();
        for ns in [
            1_500u64,
            2_000_000,
            999_999_999,
            1_000_000_000,
            86_400_123_456_789,
        ] {
            let mut out = Vec::new();
            cache.write(&c, ns, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), c.rfc3339(ns));
        }
    }

    #[test]
    fn converts_with_the_offset() {
        let c = WallClock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(c.rfc3339(1_500), "2023-11-14T22:13:20.000001Z");
        let live = WallClock::now();
        let now = SystemTime::now();
        let then = live.to_system_time(monotonic_now_ns());
        let skew = now.duration_since(then).unwrap_or_else(|e| e.duration());
        assert!(skew.as_millis() < 1000, "{skew:?}");
    }
}
pub mod hdrlog;
pub mod prometheus;
pub mod summary;
pub mod watch;
