//! The event ring buffers, one per CPU (up to [`MAX_RINGS`], shared beyond), read as one stream.
//!
//! One ring shared by every CPU made its reservation lock the largest part of what streaming
//! cost in the kernel. Per-CPU rings remove the contention but each only orders its own CPU's
//! events, and a socket's events come from several CPUs (connect() on one, the handshake's
//! softirq on another), so the reader merges them by timestamp. An event becomes final once
//! every ring has been read past its time: a drain takes the clock first, reads every ring to
//! its end, and releases only events older than that moment minus [`HOLD_NS`] (what a program
//! may still be holding between reserve and submit); the rest wait for the next drain. The
//! last drain releases everything.
//!
//! A drain hands its events over in chunks of [`CHUNK`], reading each ring only as far as the
//! merge needs: a whole drain at once (up to a quarter of every ring) went through memory twice,
//! in the read-ahead queues and in the batch, before the consumers read it a third time, and
//! the cache misses made the reader cost more than formatting the events.
use std::{collections::VecDeque, task::Poll};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tcptrace_common::MAX_RINGS;
use tokio::io::{Interest, unix::AsyncFd};

use crate::event::{DecodeError, Event};

/// The kernel object's ring buffer maps.
pub const NAMES: [&str; MAX_RINGS as usize] = [
    "EVENTS0", "EVENTS1", "EVENTS2", "EVENTS3", "EVENTS4", "EVENTS5", "EVENTS6", "EVENTS7",
];

/// How long an event waits for older ones that another CPU may still be writing.
pub const HOLD_NS: u64 = 10_000_000;

/// Rings for `cpus` possible CPUs sharing `total` bytes: (rings, bytes each). Rings are a power
/// of two (a CPU picks its ring with a mask); `total` is a power of two of at least one page.
pub fn ring_sizes(cpus: u32, total: u32) -> (u32, u32) {
    let rings = cpus.clamp(1, MAX_RINGS).next_power_of_two();
    (rings, (total / rings).max(4096))
}

/// Events handed over per [`Rings::drain`] call (128 bytes each: the chunk, the read-ahead
/// queues and the consumers' output buffer stay in the CPU's cache).
pub const CHUNK: usize = 512;

/// Records read from one ring at a time.
const READ_AHEAD: usize = 32;

pub struct Rings {
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    /// Per ring, events read but not released yet (each in its CPU's order).
    queues: Vec<VecDeque<Event>>,
    /// Per ring, whether this drain has read it to its end.
    dry: Vec<bool>,
    /// This drain releases events up to this time.
    cutoff: u64,
}

impl Rings {
    pub fn new(rings: Vec<RingBuf<MapData>>) -> anyhow::Result<Rings> {
        let queues = rings
            .iter()
            .map(|_| VecDeque::with_capacity(READ_AHEAD))
            .collect();
        let dry = vec![true; rings.len()];
        let rings = rings
            .into_iter()
            .map(|r| {
                // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives.
                unsafe { AsyncFd::register_with_interest(r, Interest::READABLE) }.map_err(|e| {
                    anyhow::anyhow!("registering a ring buffer with tokio: {}", e.into_parts().1)
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Rings {
            rings,
            queues,
            dry,
            cutoff: 0,
        })
    }

    /// Until the kernel wakes the reader on some ring.
    pub async fn readable(&mut self) -> anyhow::Result<()> {
        std::future::poll_fn(|cx| {
            let mut woken = false;
            for r in &mut self.rings {
                if let Poll::Ready(guard) = r.poll_read_ready_mut(cx) {
                    guard.context("waiting on the ring buffers")?.clear_ready();
                    woken = true;
                }
            }
            if woken {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Starts a drain: the events final at `now_ns` (the monotonic clock), or all of them when
    /// `all` (the end of a run), are what the following [`Rings::drain`] calls hand over.
    pub fn start(&mut self, now_ns: u64, all: bool) {
        self.cutoff = if all {
            u64::MAX
        } else {
            now_ns.saturating_sub(HOLD_NS)
        };
        self.dry.fill(false);
    }

    /// Appends to `out`, in time order, up to [`CHUNK`] more of this drain's events; false once
    /// the drain is over.
    pub fn drain(&mut self, out: &mut Vec<Event>, bad: &mut Vec<DecodeError>) -> bool {
        let Rings {
            rings,
            queues,
            dry,
            cutoff,
        } = self;
        let full = out.len() + CHUNK;
        merge_until(queues, *cutoff, out, full, |i, q| {
            if dry[i] {
                return;
            }
            let ring = rings[i].get_mut();
            for _ in 0..READ_AHEAD {
                let Some(item) = ring.next() else {
                    dry[i] = true;
                    return;
                };
                match Event::decode(&item) {
                    Ok(ev) => q.push_back(ev),
                    Err(e) => bad.push(e),
                }
            }
        })
    }
}

/// Moves the events with `ts_ns <= cutoff` from the queues' fronts to `out`, oldest first (a
/// k-way merge: each queue is in its own order already), until `out` holds `full` events;
/// `refill(i, queue)` is asked for more of queue `i` whenever it runs empty (and adds nothing
/// once its source has no more). Returns whether it stopped for want of room.
fn merge_until(
    queues: &mut [VecDeque<Event>],
    cutoff: u64,
    out: &mut Vec<Event>,
    full: usize,
    mut refill: impl FnMut(usize, &mut VecDeque<Event>),
) -> bool {
    loop {
        let mut best: Option<(usize, u64)> = None;
        for (i, q) in queues.iter_mut().enumerate() {
            if q.is_empty() {
                refill(i, q);
            }
            if let Some(e) = q.front()
                && e.ts_ns <= cutoff
                && best.is_none_or(|(_, ts)| e.ts_ns < ts)
            {
                best = Some((i, e.ts_ns));
            }
        }
        let Some((i, _)) = best else { return false };
        if out.len() >= full {
            return true;
        }
        if let Some(e) = queues[i].pop_front() {
            out.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TcpState;

    fn ev(ts_ns: u64, skaddr: u64) -> Event {
        Event::test_state(ts_ns, skaddr, TcpState::Close, TcpState::SynSent)
    }

    #[test]
    fn merges_rings_by_time_and_holds_back_the_recent() {
        // Three CPUs' rings, each in its own order; ring 1 idle.
        let mut qs = vec![
            VecDeque::from([ev(10, 0), ev(40, 1), ev(70, 2)]),
            VecDeque::new(),
            VecDeque::from([ev(20, 3), ev(30, 4), ev(80, 5)]),
        ];
        let mut out = Vec::new();
        assert!(!merge_until(&mut qs, 60, &mut out, usize::MAX, |_, _| {}));
        let ts: Vec<u64> = out.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, [10, 20, 30, 40]);
        // What is newer than the cutoff waits, in place, for the next drain.
        assert_eq!(qs[0].len(), 1);
        assert_eq!(qs[2].len(), 1);
        qs[1].push_back(ev(65, 6));
        assert!(!merge_until(
            &mut qs,
            u64::MAX,
            &mut out,
            usize::MAX,
            |_, _| {}
        ));
        let ts: Vec<u64> = out.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, [10, 20, 30, 40, 65, 70, 80]);
        assert!(qs.iter().all(VecDeque::is_empty));
        // Equal times keep ring order (the earlier ring first), never lose an event.
        let mut qs = vec![VecDeque::from([ev(5, 7)]), VecDeque::from([ev(5, 8)])];
        let mut out = Vec::new();
        merge_until(&mut qs, 5, &mut out, usize::MAX, |_, _| {});
        assert_eq!(out.iter().map(|e| e.skaddr).collect::<Vec<_>>(), [7, 8]);
    }

    #[test]
    fn chunks_read_rings_as_far_as_the_merge_needs() {
        // Three rings' worth of events, handed to the merge two at a time per ring and four at
        // a time to the consumer: the same order as all at once, nothing read past the cutoff
        // beyond one read-ahead.
        let rings: Vec<Vec<u64>> = vec![
            vec![1, 4, 9, 10, 11, 30, 31],
            vec![2, 3, 5, 6, 7, 8, 40],
            vec![12, 13, 14, 15, 16, 17, 18],
        ];
        let mut left: Vec<VecDeque<Event>> = rings
            .iter()
            .map(|r| r.iter().map(|&ts| ev(ts, ts)).collect())
            .collect();
        let mut qs = vec![VecDeque::new(); 3];
        let mut out = Vec::new();
        let mut chunks = 0;
        loop {
            let full = out.len() + 4;
            let more = merge_until(&mut qs, 20, &mut out, full, |i, q| {
                for _ in 0..2 {
                    if let Some(e) = left[i].pop_front() {
                        q.push_back(e);
                    }
                }
            });
            chunks += 1;
            assert!(out.len() <= full);
            if !more {
                break;
            }
        }
        let ts: Vec<u64> = out.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, (1..=18).collect::<Vec<_>>());
        assert_eq!(chunks, 5);
        // Past the cutoff: what was read stays queued, the rest in its ring.
        assert_eq!(qs[0].iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [30]);
        assert_eq!(left[0].iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [31]);
        assert_eq!(qs[1].iter().map(|e| e.ts_ns).collect::<Vec<_>>(), [40]);
        assert!(qs[2].is_empty() && left[1].is_empty() && left[2].is_empty());
        // A chunk that ends exactly where the events do says so.
        let mut qs = vec![VecDeque::from([ev(1, 0), ev(2, 1)])];
        let mut out = Vec::new();
        assert!(!merge_until(&mut qs, 5, &mut out, 2, |_, _| {}));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn rings_are_a_power_of_two_sharing_the_size() {
        assert_eq!(ring_sizes(1, 16 << 20), (1, 16 << 20));
        assert_eq!(ring_sizes(2, 16 << 20), (2, 8 << 20));
        assert_eq!(ring_sizes(6, 16 << 20), (8, 2 << 20));
        assert_eq!(ring_sizes(64, 16 << 20), (8, 2 << 20));
        // Never below a page.
        assert_eq!(ring_sizes(8, 4096), (8, 4096));
    }
}
