//! Per-socket lifecycle table: what tcptrace knows about each socket it has seen.
//!
//! Keyed by the kernel socket address. Pure: no I/O and no clock; time comes from the events.
//! It tolerates what the kernel stream really looks like:
//! - address reuse: a socket that closed (or whose close we never saw) and a new one at the same
//!   address are two lives;
//! - sockets first seen mid-life (started before tcptrace): their first dwell is unknown;
//! - timestamps slightly out of order across CPUs: a negative duration is clamped to 0 and counted.
//!
//! It is bounded: at `cap` entries the least recently active eighth is evicted in one sweep
//! (listeners are kept), and evictions are counted so the loss is visible.
// FxHash: the table is on the per-event path, and SipHash's DoS resistance buys nothing for
// kernel socket addresses.
use rustc_hash::FxHashMap as HashMap;

use crate::event::{Comm, Event, EventKind, TcpState};

/// The process a socket belongs to, as far as the events tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: Comm,
}

/// One socket's life so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    pub state: TcpState,
    /// When it entered `state` (or when tcptrace first saw it, if `since_known` is false).
    pub since_ns: u64,
    /// When tcptrace first saw this life.
    pub first_ns: u64,
    /// The first state tcptrace saw it in (the old state of its first transition).
    pub first_state: TcpState,
    /// Was the first event a birth (CLOSE->SYN_SENT, CLOSE->LISTEN, a child's LISTEN->SYN_RECV)?
    pub born_seen: bool,
    /// False until the first transition tcptrace saw: the time in the first state is unknown.
    pub since_known: bool,
    pub owner: Option<Owner>,
    /// Retransmits and resets seen on this life, by kind.
    pub retransmits: u32,
    pub last_activity_ns: u64,
    /// The table's gap epoch when `since_ns` was set: after a gap in the stream (lost events)
    /// the time a socket entered its state is no longer trusted.
    pub epoch: u32,
    /// Some gap fell inside this life: its lifetime is not measured.
    pub spans_gap: bool,
}

/// What applying one event did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// For a transition: time spent in the old state, if tcptrace saw the socket enter it.
    pub dwell_ns: Option<u64>,
    /// The socket's owner as known after this event.
    pub owner: Option<Owner>,
    /// The life this event ended (a transition to CLOSE), with its final figures.
    pub ended: Option<Life>,
    /// The life as it is after this event (None if it ended or the event has no socket).
    pub life: Option<Life>,
    /// This life spans a gap in the stream (lost events): its lifetime is unknown.
    pub across_gap: bool,
}

/// Counters that make the table's imperfections visible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Entries dropped to stay under the cap.
    pub evicted: u64,
    /// Transitions whose old state did not match what the table held (a missed event or an
    /// address reused without a visible close): a new life was started.
    pub mismatched: u64,
    /// Events whose timestamp was earlier than the previous one on the same socket.
    pub out_of_order: u64,
    /// Gaps in the stream (lost events), across which no duration is measured.
    pub gaps: u64,
}

#[derive(Clone, Debug)]
pub struct Table {
    map: HashMap<u64, Life>,
    cap: usize,
    stats: TableStats,
    epoch: u32,
}

/// Transitions that always run in the context of the process that owns the socket: connect(),
/// listen(), and close()/shutdown() on an established or half-closed socket.
fn runs_in_owner_context(old: TcpState, new: TcpState) -> bool {
    use TcpState::*;
    matches!(
        (old, new),
        (Close, SynSent) | (Close, Listen) | (Established, FinWait1) | (CloseWait, LastAck)
    )
}

fn is_birth(old: TcpState, new: TcpState) -> bool {
    use TcpState::*;
    matches!(
        (old, new),
        (Close, SynSent) | (Close, Listen) | (Listen, SynRecv)
    )
}

impl Table {
    pub const DEFAULT_CAP: usize = 1 << 18;

    pub fn new(cap: usize) -> Table {
        Table {
            map: HashMap::with_capacity_and_hasher(cap.min(1 << 16), Default::default()),
            cap: cap.max(8),
            stats: TableStats::default(),
            epoch: 0,
        }
    }

    /// Events were lost here: a socket whose transitions went missing may look continuous
    /// (an address reused by a new socket in the same state), so no dwell is measured across
    /// the gap. O(1): lives from an older epoch count as first seen.
    pub fn gap(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.stats.gaps += 1;
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    pub fn get(&self, skaddr: u64) -> Option<&Life> {
        self.map.get(&skaddr)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Life)> {
        self.map.iter()
    }

    /// Applies one event. Non-transition events only touch activity and counters.
    pub fn apply(&mut self, ev: &Event) -> Outcome {
        if ev.skaddr == 0 {
            return Outcome::default();
        }
        match ev.kind {
            EventKind::State { old, new } => self.transition(ev, old, new),
            EventKind::Retransmit { .. } => {
                let Some(life) = self.map.get_mut(&ev.skaddr) else {
                    return Outcome::default();
                };
                life.retransmits += 1;
                life.last_activity_ns = life.last_activity_ns.max(ev.ts_ns);
                Outcome {
                    owner: life.owner,
                    life: Some(*life),
                    ..Outcome::default()
                }
            }
            _ => {
                let life = self.map.get(&ev.skaddr).copied();
                Outcome {
                    owner: life.and_then(|l| l.owner),
                    life,
                    ..Outcome::default()
                }
            }
        }
    }

    fn transition(&mut self, ev: &Event, old: TcpState, new: TcpState) -> Outcome {
        let owner_here = (runs_in_owner_context(old, new) && ev.pid != 0).then_some(Owner {
            pid: ev.pid,
            comm: ev.comm,
        });
        let existing = self.map.get(&ev.skaddr).copied();
        let mut life = match existing {
            // The same life continues only if the table agrees on the old state and this is not
            // a birth (a birth at a known address means the old life ended unseen).
            Some(l) if l.state == old && !is_birth(old, new) => l,
            Some(_) if !is_birth(old, new) => {
                self.stats.mismatched += 1;
                self.fresh(ev, old, new)
            }
            _ => self.fresh(ev, old, new),
        };
        let continuing = existing.is_some_and(|l| l.first_ns == life.first_ns);
        let across_gap = continuing && (life.epoch != self.epoch || life.spans_gap);
        let trusted = life.since_known && life.epoch == self.epoch;
        let dwell_ns = if continuing && trusted {
            Some(match ev.ts_ns.checked_sub(life.since_ns) {
                Some(d) => d,
                None => {
                    self.stats.out_of_order += 1;
                    0
                }
            })
        } else {
            // First sight of this life (a birth, or a socket met mid-life): nothing to measure.
            None
        };
        if owner_here.is_some() {
            life.owner = owner_here;
        }
        // Keep `since` monotonic per socket even when events arrive slightly out of order.
        life.since_ns = life.since_ns.max(ev.ts_ns);
        if !continuing {
            life.since_ns = ev.ts_ns;
        }
        life.state = new;
        life.since_known = true;
        life.spans_gap = across_gap;
        life.epoch = self.epoch;
        life.last_activity_ns = life.since_ns;

        if new == TcpState::Close {
            // Whatever the table held at this address is over now.
            self.map.remove(&ev.skaddr);
            return Outcome {
                dwell_ns,
                owner: life.owner,
                ended: Some(life),
                life: None,
                across_gap,
            };
        }
        if !continuing {
            self.make_room(ev.skaddr);
        }
        self.map.insert(ev.skaddr, life);
        Outcome {
            dwell_ns,
            owner: life.owner,
            ended: None,
            life: Some(life),
            across_gap,
        }
    }

    fn fresh(&self, ev: &Event, old: TcpState, new: TcpState) -> Life {
        Life {
            state: old,
            since_ns: ev.ts_ns,
            first_ns: ev.ts_ns,
            first_state: old,
            born_seen: is_birth(old, new),
            since_known: false,
            owner: None,
            retransmits: 0,
            last_activity_ns: ev.ts_ns,
            epoch: self.epoch,
            spans_gap: false,
        }
    }

    /// Makes room for one more entry (unless `key` is already present).
    fn make_room(&mut self, key: u64) {
        if self.map.len() < self.cap || self.map.contains_key(&key) {
            return;
        }
        // Evict the least recently active eighth in one sweep: amortised O(1) per insert.
        let mut ages: Vec<u64> = self
            .map
            .values()
            .filter(|l| l.state != TcpState::Listen)
            .map(|l| l.last_activity_ns)
            .collect();
        let n = (self.cap / 8).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        let (_, &mut cutoff, _) = ages.select_nth_unstable(n - 1);
        let mut budget = n;
        self.map.retain(|_, l| {
            if budget > 0 && l.state != TcpState::Listen && l.last_activity_ns <= cutoff {
                budget -= 1;
                false
            } else {
                true
            }
        });
        self.stats.evicted += (n - budget) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    pub(crate) fn st(ts: u64, sk: u64, old: TcpState, new: TcpState, pid: u32) -> Event {
        Event {
            ts_ns: ts,
            skaddr: sk,
            pid,
            tid: pid,
            comm: Comm::from_str_lossy("app"),
            netns: 1,
            local: "127.0.0.1:1000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            kind: EventKind::State { old, new },
            gap: false,
        }
    }

    use TcpState::*;

    #[test]
    fn full_client_life() {
        let mut t = Table::new(100);
        let o = t.apply(&st(1_000, 7, Close, SynSent, 42));
        assert_eq!(o.dwell_ns, None);
        assert_eq!(o.owner.unwrap().pid, 42);
        let o = t.apply(&st(3_000, 7, SynSent, Established, 0));
        assert_eq!(o.dwell_ns, Some(2_000));
        assert_eq!(
            o.owner.unwrap().pid,
            42,
            "softirq pid 0 does not take ownership"
        );
        t.apply(&st(10_000, 7, Established, FinWait1, 42));
        t.apply(&st(10_500, 7, FinWait1, FinWait2, 0));
        let o = t.apply(&st(11_000, 7, FinWait2, Close, 0));
        assert_eq!(o.dwell_ns, Some(500));
        let ended = o.ended.unwrap();
        assert_eq!(ended.first_ns, 1_000);
        assert!(ended.born_seen);
        assert!(t.is_empty());
    }

    #[test]
    fn first_seen_mid_life_has_unknown_dwell() {
        let mut t = Table::new(100);
        let o = t.apply(&st(5, 9, Established, CloseWait, 0));
        assert_eq!(o.dwell_ns, None);
        let o = t.apply(&st(25, 9, CloseWait, LastAck, 77));
        assert_eq!(o.dwell_ns, Some(20));
        assert_eq!(o.owner.unwrap().pid, 77);
        assert!(!o.life.unwrap().born_seen);
    }

    #[test]
    fn address_reuse_starts_a_new_life() {
        let mut t = Table::new(100);
        t.apply(&st(1, 5, Close, SynSent, 1));
        t.apply(&st(2, 5, SynSent, Established, 0));
        // Close never seen; the address is reused by a new connect().
        let o = t.apply(&st(100, 5, Close, SynSent, 2));
        assert_eq!(o.dwell_ns, None);
        assert_eq!(o.life.unwrap().first_ns, 100);
        assert_eq!(o.owner.unwrap().pid, 2);
        // A transition that disagrees with the table also starts a new life, counted.
        let o = t.apply(&st(200, 5, FinWait2, Close, 0));
        assert_eq!(o.dwell_ns, None);
        assert_eq!(t.stats().mismatched, 1);
        assert!(t.get(5).is_none());
    }

    #[test]
    fn out_of_order_is_clamped_and_counted() {
        let mut t = Table::new(100);
        t.apply(&st(1_000, 3, Close, SynSent, 1));
        let o = t.apply(&st(900, 3, SynSent, Established, 0));
        assert_eq!(o.dwell_ns, Some(0));
        assert_eq!(t.stats().out_of_order, 1);
        let o = t.apply(&st(1_500, 3, Established, FinWait1, 1));
        assert_eq!(o.dwell_ns, Some(500), "since stays at the later timestamp");
    }

    #[test]
    fn no_duration_across_a_gap() {
        let mut t = Table::new(100);
        t.apply(&st(0, 8, Close, SynSent, 1));
        t.apply(&st(10, 8, SynSent, Established, 0));
        t.gap();
        // The same address, the same state: maybe the same socket, maybe a new one.
        let o = t.apply(&st(5_000, 8, Established, FinWait1, 1));
        assert_eq!(o.dwell_ns, None);
        assert!(o.across_gap);
        let o = t.apply(&st(5_100, 8, FinWait1, FinWait2, 0));
        assert_eq!(o.dwell_ns, Some(100), "measured again after the gap");
        let o = t.apply(&st(5_200, 8, FinWait2, Close, 0));
        assert!(o.across_gap, "the life still spans the gap: no lifetime");
        assert_eq!(t.stats().gaps, 1);
    }

    #[test]
    fn cap_evicts_oldest_but_keeps_listeners() {
        let mut t = Table::new(16);
        t.apply(&st(0, 1000, Close, Listen, 9));
        for i in 0..15u64 {
            t.apply(&st(10 + i, i + 1, Close, SynSent, 1));
        }
        assert_eq!(t.len(), 16);
        t.apply(&st(100, 999, Close, SynSent, 1));
        assert_eq!(t.stats().evicted, 2);
        assert_eq!(t.len(), 15);
        assert!(t.get(1000).is_some(), "listener kept");
        assert!(t.get(1).is_none() && t.get(2).is_none(), "oldest evicted");
        assert!(t.get(3).is_some() && t.get(999).is_some());
    }

    #[test]
    fn retransmits_count_on_the_life() {
        let mut t = Table::new(16);
        t.apply(&st(0, 4, Close, SynSent, 1));
        let mut r = st(5, 4, Close, SynSent, 0);
        r.kind = EventKind::Retransmit {
            state: Some(SynSent),
        };
        t.apply(&r);
        t.apply(&r);
        let o = t.apply(&st(9, 4, SynSent, Established, 0));
        assert_eq!(o.life.unwrap().retransmits, 2);
    }
}
