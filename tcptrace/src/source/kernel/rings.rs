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

pub struct Rings {
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    /// Per ring, events read but not released yet (each in its CPU's order).
    queues: Vec<VecDeque<Event>>,
}

impl Rings {
    pub fn new(rings: Vec<RingBuf<MapData>>) -> anyhow::Result<Rings> {
        let queues = rings.iter().map(|_| VecDeque::new()).collect();
        let rings = rings
            .into_iter()
            .map(|r| {
                // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd lives.
                unsafe { AsyncFd::register_with_interest(r, Interest::READABLE) }.map_err(|e| {
                    anyhow::anyhow!("registering a ring buffer with tokio: {}", e.into_parts().1)
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Rings { rings, queues })
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

    /// Reads every ring and appends to `out`, in time order, the events that are final (all of
    /// them when `all`, at the end of a run). `now_ns`: the monotonic clock, taken before.
    pub fn drain(
        &mut self,
        now_ns: u64,
        all: bool,
        out: &mut Vec<Event>,
        bad: &mut Vec<DecodeError>,
    ) {
        for (ring, q) in self.rings.iter_mut().zip(&mut self.queues) {
            let ring = ring.get_mut();
            while let Some(item) = ring.next() {
                match Event::decode(&item) {
                    Ok(ev) => q.push_back(ev),
                    Err(e) => bad.push(e),
                }
            }
        }
        let cutoff = if all {
            u64::MAX
        } else {
            now_ns.saturating_sub(HOLD_NS)
        };
        merge_until(&mut self.queues, cutoff, out);
    }
}

/// Moves the events with `ts_ns <= cutoff` from the queues' fronts to `out`, oldest first
/// (a k-way merge: each queue is in its own order already).
fn merge_until(queues: &mut [VecDeque<Event>], cutoff: u64, out: &mut Vec<Event>) {
    loop {
        let mut best: Option<(usize, u64)> = None;
        for (i, q) in queues.iter().enumerate() {
            if let Some(e) = q.front()
                && e.ts_ns <= cutoff
                && best.is_none_or(|(_, ts)| e.ts_ns < ts)
            {
                best = Some((i, e.ts_ns));
            }
        }
        let Some((i, _)) = best else { return };
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
        merge_until(&mut qs, 60, &mut out);
        let ts: Vec<u64> = out.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, [10, 20, 30, 40]);
        // What is newer than the cutoff waits, in place, for the next drain.
        assert_eq!(qs[0].len(), 1);
        assert_eq!(qs[2].len(), 1);
        qs[1].push_back(ev(65, 6));
        merge_until(&mut qs, u64::MAX, &mut out);
        let ts: Vec<u64> = out.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, [10, 20, 30, 40, 65, 70, 80]);
        assert!(qs.iter().all(VecDeque::is_empty));
        // Equal times keep ring order (the earlier ring first), never lose an event.
        let mut qs = vec![VecDeque::from([ev(5, 7)]), VecDeque::from([ev(5, 8)])];
        let mut out = Vec::new();
        merge_until(&mut qs, 5, &mut out);
        assert_eq!(out.iter().map(|e| e.skaddr).collect::<Vec<_>>(), [7, 8]);
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
