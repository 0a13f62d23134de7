//! The sock_diag poller: a source of socket snapshots (with kernel counters and sysctls) taken
//! every `--poll-interval` in each namespace of interest, on its own thread so a slow dump never
//! delays the ring buffer reader.
use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::mpsc,
    time::Duration,
};

use crate::{
    diagnose::{self, Snapshot},
    event::TcpState,
    sink::monotonic_now_ns,
    source::{diag, netns, procnet},
};

/// Which namespaces to poll.
#[derive(Clone, Debug)]
pub enum Targets {
    /// One namespace (from --netns).
    One(netns::NetnsTarget),
    /// Every namespace in use, looked up again every [`RESCAN_EVERY`] polls.
    All,
}

/// Every how many polls `Targets::All` scans /proc again (and at the next poll after a
/// namespace's path stopped opening it). The scan stats every process's ns/net: with ~90
/// processes it was a fifth of an idle `watch`'s CPU, and hosts run thousands. A namespace
/// made meanwhile is polled within 10 s with the defaults.
pub const RESCAN_EVERY: u64 = 5;

impl Targets {
    fn list(&self) -> Vec<netns::NetnsTarget> {
        match self {
            Targets::One(t) => vec![t.clone()],
            Targets::All => netns::all_namespaces(),
        }
    }
}

/// What one poll dumps besides the listening sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dump {
    /// LISTEN only: answered from the kernel's listening hash, without walking every
    /// connection.
    Listeners,
    /// Also CLOSE_WAIT and FIN_WAIT2: the kernel walks its whole established hash (every
    /// namespace's sockets, TIME_WAIT included) to find them.
    Closing,
    /// Also TIME_WAIT, which can number hundreds of thousands on a busy host.
    All,
}

impl Dump {
    /// The states a poll asks for: what diagnosis needs, not every socket.
    fn states(self) -> netlink_packet_sock_diag::inet::StateFlags {
        diag::states(&[TcpState::Listen]) | self.walked_states()
    }

    /// Of those, the states found by walking the established hash (all but LISTEN).
    fn walked_states(self) -> netlink_packet_sock_diag::inet::StateFlags {
        let mut s = Vec::new();
        if self != Dump::Listeners {
            s.extend([TcpState::CloseWait, TcpState::FinWait2]);
        }
        if self == Dump::All {
            s.push(TcpState::TimeWait);
        }
        diag::states(&s)
    }
}

/// Every how many polls the TIME_WAIT sockets themselves are dumped, for their breakdown by
/// remote end (30 s with the default --poll-interval); their count comes from sockstat every
/// poll. Each dump returns all of them: ~64 000 in the 10 000 connections/s benchmark, which
/// was most of `watch`'s own CPU when taken every fifth poll.
pub const TIME_WAIT_EVERY: u64 = 15;

/// The most polls between two walks for CLOSE_WAIT and FIN_WAIT2 sockets.
pub const CLOSING_EVERY_MAX: u64 = 5;

/// FIN_WAIT2 sockets gone since a namespace's last walk are looked up one by one up to this
/// many; beyond, one TIME_WAIT dump is cheaper.
const LOOKUPS_MAX: usize = 256;

/// What the `n`th poll (from 0) dumps. Listeners every poll (accept queue peaks); TIME_WAIT every
/// [`TIME_WAIT_EVERY`]th (and sooner near port exhaustion, see [`breakdown_now`]); CLOSE_WAIT
/// and FIN_WAIT2 every `closing_every`th (see [`closing_every`]). The first poll dumps
/// everything, so the sockets that were there before tcptrace are known from the start.
pub fn dump_for(n: u64, closing_every: u64) -> Dump {
    if n.is_multiple_of(TIME_WAIT_EVERY) {
        Dump::All
    } else if n.is_multiple_of(closing_every.max(1)) {
        Dump::Closing
    } else {
        Dump::Listeners
    }
}

/// Every how many polls CLOSE_WAIT and FIN_WAIT2 sockets are dumped: as seldom as lets a leak
/// be reported within a sixth of `--close-wait-threshold` after crossing it (every 5th poll
/// with the defaults, 2 s and 60 s), at most every [`CLOSING_EVERY_MAX`]th. Each such dump
/// walks every connection on the host, once per namespace: at 10 000 connections/s that walk
/// was most of `watch`'s own CPU.
pub fn closing_every(poll_interval: Duration, close_wait_threshold: Duration) -> u64 {
    let per_poll = poll_interval.as_nanos().max(1) * 6;
    ((close_wait_threshold.as_nanos() / per_poll) as u64).clamp(1, CLOSING_EVERY_MAX)
}

/// Whether a namespace's poll planned as `planned` takes the TIME_WAIT breakdown: as planned,
/// or at once when its TIME_WAIT count `tw` has reached `threshold` (the fewest sockets
/// towards one remote end that exhaust its local ports) while its last breakdown was below it,
/// so that port exhaustion is reported at its onset rather than up to [`TIME_WAIT_EVERY`] polls
/// later.
pub fn breakdown_now(planned: Dump, tw: Option<u64>, threshold: Option<f64>, near: bool) -> bool {
    planned == Dump::All || (!near && reaches(tw, threshold))
}

fn reaches(tw: Option<u64>, threshold: Option<f64>) -> bool {
    matches!((tw, threshold), (Some(tw), Some(t)) if tw as f64 >= t)
}

/// What the poller remembers of a namespace from one poll to the next.
#[derive(Clone, Debug, Default)]
struct Memory {
    /// Its FIN_WAIT2 connections (local, remote) at its last walk: those gone since are looked
    /// up, so diagnosis can tell a FIN_WAIT2 timeout without dumping every TIME_WAIT socket.
    fin_wait2: Vec<diag::Conn>,
    /// Whether its TIME_WAIT count had reached the port-exhaustion threshold at its last
    /// breakdown.
    near_exhaustion: bool,
    /// The poll (number) that last polled it.
    polled_at: u64,
}

/// Whether to keep, at poll `n`, what is remembered of a namespace no longer listed: diagnosis
/// judges a FIN_WAIT2 socket gone from a walk by what the poller looked up, so the poller must
/// remember a namespace's FIN_WAIT2 sockets at least as long as diagnosis does (ten polls, at
/// least a minute: see `Health`), in case it is listed again.
fn remember(m: &Memory, n: u64, every: Duration) -> bool {
    let minute = (60_000 / every.as_millis().max(1)) as u64;
    !m.fin_wait2.is_empty() && n.saturating_sub(m.polled_at) <= 2 * minute.max(10)
}

fn poll_one(
    t: &netns::NetnsTarget,
    planned: Dump,
    port_exhaustion_ratio: f64,
    mem: Memory,
) -> anyhow::Result<(Snapshot, Memory)> {
    let inode = t.inode;
    netns::run_in(t, move || {
        let ts_ns = monotonic_now_ns();
        let sysctls = procnet::read_sysctls();
        let sockstat = procnet::read_sockstat().ok();
        let time_wait_total = sockstat.map(|(_, tw)| tw);
        let threshold = diagnose::local_port_range(&sysctls)
            .map(|r| diagnose::port_exhaustion_threshold(r, port_exhaustion_ratio));
        let dump = if breakdown_now(planned, time_wait_total, threshold, mem.near_exhaustion) {
            Dump::All
        } else {
            planned
        };
        let mut sockets = diag::dump(Dump::Listeners.states(), true)?;
        let walked = dump != Dump::Listeners
            && sockstat.is_none_or(|(inuse, tw)| walk_needed(inuse, tw, sockets.len() as u64));
        if walked {
            // Memory info (the drop counter) is read for listeners only.
            sockets.extend(diag::dump(dump.walked_states(), false)?);
        }
        let mut time_wait_counted = dump == Dump::All;
        let fin_wait2_resolved = dump == Dump::Closing;
        if fin_wait2_resolved {
            let now: HashSet<diag::Conn> = fin_wait2_of(&sockets).collect();
            let gone: Vec<_> = mem
                .fin_wait2
                .iter()
                .filter(|c| !now.contains(c))
                .copied()
                .collect();
            if gone.len() > LOOKUPS_MAX {
                sockets.extend(diag::dump(diag::states(&[TcpState::TimeWait]), false)?);
                time_wait_counted = true;
            } else {
                sockets.extend(diag::closing_among(&gone)?);
            }
        }
        let mem = Memory {
            // Set by the caller, which knows the poll's number.
            polled_at: 0,
            fin_wait2: if dump == Dump::Listeners {
                mem.fin_wait2
            } else {
                fin_wait2_of(&sockets).collect()
            },
            near_exhaustion: if time_wait_counted {
                reaches(time_wait_total, threshold)
            } else {
                mem.near_exhaustion
            },
        };
        let snap = Snapshot {
            ts_ns,
            netns: inode,
            time_wait_counted,
            time_wait_total,
            fin_wait2_resolved,
            listeners_only: dump == Dump::Listeners,
            sockets,
            counters: procnet::read_counters()?,
            sysctls,
        };
        Ok((snap, mem))
    })
}

fn fin_wait2_of(sockets: &[diag::DiagSocket]) -> impl Iterator<Item = diag::Conn> + '_ {
    sockets
        .iter()
        .filter(|d| d.state == TcpState::FinWait2)
        .map(|d| (d.local, d.remote, d.bound_if))
}

/// Whether a namespace with `inuse` hashed TCP sockets (listeners included), `tw` in TIME_WAIT
/// and `listeners` listening has any socket outside the listening hash: if not, the walk of
/// the established hash (which holds every namespace's sockets) is skipped, as for most
/// namespaces of a host most of the time.
fn walk_needed(inuse: u64, tw: u64, listeners: u64) -> bool {
    tw > 0 || inuse > listeners
}

/// Polls every target once. Namespaces that vanished meanwhile are skipped; errors for the
/// namespace the user named are returned, and so is the first error when no namespace at all
/// could be polled (e.g. after --user dropped the capabilities setns needs), so that it is
/// reported rather than silently leaving diagnosis without snapshots.
pub fn poll(targets: &Targets, dump: Dump) -> anyhow::Result<Vec<Snapshot>> {
    let ratio = diagnose::HealthConfig::default().port_exhaustion_ratio;
    poll_these(targets, &targets.list(), (0, dump), ratio, &mut HashMap::new()).0
}

/// `poll` over `list`, the targets' namespaces as last looked up, as poll number `n` planned as
/// `dump`, with what was remembered of each (updated); also whether one of them could not be
/// polled (vanished, or its path now opens another namespace).
fn poll_these(
    targets: &Targets,
    list: &[netns::NetnsTarget],
    (n, dump): (u64, Dump),
    port_exhaustion_ratio: f64,
    memory: &mut HashMap<u32, Memory>,
) -> (anyhow::Result<Vec<Snapshot>>, bool) {
    let mut out = Vec::new();
    let mut first_error = None;
    let mut failed = false;
    for t in list {
        let mem = memory.get(&t.inode).cloned().unwrap_or_default();
        match poll_one(t, dump, port_exhaustion_ratio, mem) {
            Ok((s, mem)) => {
                memory.insert(t.inode, Memory { polled_at: n, ..mem });
                out.push(s)
            }
            Err(e) if matches!(targets, Targets::One(_)) => return (Err(e), true),
            Err(e) => {
                failed = true;
                first_error.get_or_insert(e);
            }
        }
    }
    let r = match first_error {
        Some(e) if out.is_empty() => Err(e.context(
            "no network namespace could be polled: listener, leak and TIME_WAIT diagnosis is off (after --user, tcptrace can no longer enter other namespaces: run without --user to keep it)",
        )),
        _ => Ok(out),
    };
    (r, failed)
}

pub struct Poller {
    pub rx: mpsc::Receiver<anyhow::Result<Vec<Snapshot>>>,
    stop: mpsc::Sender<()>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Starts polling now and then every `every`; CLOSE_WAIT and FIN_WAIT2 sockets every
    /// `closing_every`th poll (see [`dump_for`]), TIME_WAIT sooner when its count reaches
    /// `port_exhaustion_ratio` of the local port range (see [`breakdown_now`]).
    pub fn start(
        targets: Targets,
        every: Duration,
        closing_every: u64,
        port_exhaustion_ratio: f64,
    ) -> Poller {
        let (tx, rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("tcptrace-poll".into())
            .spawn(move || {
                let mut list: Vec<netns::NetnsTarget> = Vec::new();
                let mut memory = HashMap::new();
                let mut rescan = true;
                for n in 0u64.. {
                    if rescan || n.is_multiple_of(RESCAN_EVERY) {
                        list = targets.list();
                        memory.retain(|ns, m| {
                            list.iter().any(|t| t.inode == *ns) || remember(m, n, every)
                        });
                    }
                    let plan = (n, dump_for(n, closing_every));
                    let (r, failed) =
                        poll_these(&targets, &list, plan, port_exhaustion_ratio, &mut memory);
                    rescan = failed;
                    if tx.send(r).is_err() {
                        return;
                    }
                    match stop_rx.recv_timeout(every) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .ok();
        Poller { rx, stop, handle }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The namespace target for `--netns`: the path the user gave, or one found for an inode.
pub fn target_for(arg: &str, inode: u32) -> anyhow::Result<Targets> {
    let path = if arg.contains('/') {
        PathBuf::from(arg)
    } else if arg.parse::<u32>().is_ok() {
        return Ok(Targets::One(netns::find(inode)?));
    } else {
        PathBuf::from("/var/run/netns").join(arg)
    };
    Ok(Targets::One(netns::NetnsTarget { inode, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_sockets_are_dumped_as_seldom_as_the_threshold_allows() {
        let s = Duration::from_secs;
        // Defaults: a leak is seen at most 10 s after crossing 60 s.
        assert_eq!(closing_every(s(2), s(60)), 5);
        assert_eq!(closing_every(s(2), s(30)), 2);
        // A short threshold (as tests use): every poll.
        assert_eq!(closing_every(Duration::from_millis(200), s(1)), 1);
        assert_eq!(closing_every(s(2), s(3600)), CLOSING_EVERY_MAX);
        use Dump::*;
        let plan: Vec<Dump> = (0..31).map(|n| dump_for(n, 5)).collect();
        let (l, c) = (Listeners, Closing);
        #[rustfmt::skip]
        assert_eq!(
            plan,
            [
                All, l, l, l, l, c, l, l, l, l, c, l, l, l, l,
                All, l, l, l, l, c, l, l, l, l, c, l, l, l, l,
                All,
            ]
        );
        let plan: Vec<Dump> = (14..18).map(|n| dump_for(n, 2)).collect();
        assert_eq!(plan, [Closing, All, Closing, Listeners]);
        assert!((0..20).all(|n| dump_for(n, 1) != Listeners));
        assert_eq!(Dump::Listeners.states(), diag::states(&[TcpState::Listen]));
        assert!(Dump::Listeners.walked_states().is_empty());
        assert_eq!(
            Dump::All.states(),
            diag::states(&[
                TcpState::Listen,
                TcpState::CloseWait,
                TcpState::FinWait2,
                TcpState::TimeWait
            ])
        );
    }

    #[test]
    fn time_wait_is_broken_down_at_the_onset_of_port_exhaustion() {
        // 1000 local ports at 0.8: 800 TIME_WAIT sockets could all be towards one remote end.
        let t = Some(800.0);
        assert!(!breakdown_now(Dump::Listeners, Some(799), t, false));
        assert!(breakdown_now(Dump::Listeners, Some(800), t, false));
        assert!(breakdown_now(Dump::Closing, Some(5000), t, false));
        // Once broken down above the threshold, back to the usual cadence.
        assert!(!breakdown_now(Dump::Closing, Some(5000), t, true));
        assert!(breakdown_now(Dump::All, Some(5000), t, true));
        assert!(breakdown_now(Dump::All, Some(0), t, false));
        // Count or port range unknown: as planned.
        assert!(!breakdown_now(Dump::Listeners, None, t, false));
        assert!(!breakdown_now(Dump::Listeners, Some(5000), None, false));
    }

    #[test]
    fn fin_wait2_sockets_are_remembered_as_long_as_diagnosis_tracks_them() {
        let fw2 = |polled_at| Memory {
            fin_wait2: vec![("10.0.0.1:1".parse().unwrap(), "10.0.0.9:80".parse().unwrap(), 0)],
            near_exhaustion: false,
            polled_at,
        };
        let every = Duration::from_secs(2);
        // Diagnosis forgets a namespace unpolled for a minute (30 polls of 2 s): kept for 60.
        assert!(remember(&fw2(0), 60, every));
        assert!(!remember(&fw2(0), 61, every));
        // A 10 s interval: ten polls, kept for 20.
        assert!(remember(&fw2(5), 25, Duration::from_secs(10)));
        assert!(!remember(&fw2(5), 26, Duration::from_secs(10)));
        assert!(!remember(&Memory::default(), 1, every), "nothing to keep");
    }

    #[test]
    fn the_walk_is_skipped_only_when_it_would_find_nothing() {
        // A host's namespace with one listener and nothing else (this machine's, at rest).
        assert!(!walk_needed(1, 0, 1));
        assert!(!walk_needed(0, 0, 0));
        // A connection, or a TIME_WAIT socket, besides it.
        assert!(walk_needed(2, 0, 1));
        assert!(walk_needed(1, 3, 1));
    }
}
