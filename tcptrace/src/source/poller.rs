//! The sock_diag poller: a source of socket snapshots (with kernel counters and sysctls) taken
//! every `--poll-interval` in each namespace of interest, on its own thread so a slow dump never
//! delays the ring buffer reader.
use std::{path::PathBuf, sync::mpsc, time::Duration};

use crate::{
    diagnose::Snapshot,
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

/// Every how many polls TIME_WAIT sockets are dumped.
pub const TIME_WAIT_EVERY: u64 = 5;

/// What the `n`th poll (from 0) dumps. Listeners every poll (accept queue peaks); TIME_WAIT every
/// [`TIME_WAIT_EVERY`]th; CLOSE_WAIT and FIN_WAIT2 every `closing_every`th (see
/// [`closing_every`]). The first poll dumps everything, so the sockets that were there before
/// tcptrace are known from the start.
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
/// with the defaults, 2 s and 60 s), at most every [`TIME_WAIT_EVERY`]th. Each such dump walks
/// every connection on the host, once per namespace: at 10 000 connections/s that walk was most
/// of `watch`'s own CPU.
pub fn closing_every(poll_interval: Duration, close_wait_threshold: Duration) -> u64 {
    let per_poll = poll_interval.as_nanos().max(1) * 6;
    ((close_wait_threshold.as_nanos() / per_poll) as u64).clamp(1, TIME_WAIT_EVERY)
}

fn poll_one(t: &netns::NetnsTarget, dump: Dump) -> anyhow::Result<Snapshot> {
    let inode = t.inode;
    netns::run_in(t, move || {
        let ts_ns = monotonic_now_ns();
        Ok(Snapshot {
            ts_ns,
            netns: inode,
            time_wait_counted: dump == Dump::All,
            listeners_only: dump == Dump::Listeners,
            sockets: dump_sockets(dump)?,
            counters: procnet::read_counters()?,
            sysctls: procnet::read_sysctls(),
        })
    })
}

/// The sockets `dump` asks for, in the calling thread's namespace. Listening sockets come from
/// the listening hash; the others need a walk of the established hash, which holds every
/// namespace's sockets: so it is skipped when the namespace's own counts say it would find
/// nothing (only listeners, no TIME_WAIT), as for most namespaces of a host most of the time.
fn dump_sockets(dump: Dump) -> anyhow::Result<Vec<diag::DiagSocket>> {
    let mut sockets = diag::dump(Dump::Listeners.states(), true)?;
    if dump == Dump::Listeners {
        return Ok(sockets);
    }
    let nothing_else = match procnet::read_sockstat() {
        Ok((inuse, tw)) => !walk_needed(inuse, tw, sockets.len() as u64),
        Err(_) => false,
    };
    if !nothing_else {
        // Memory info (the drop counter) is read for listeners only.
        sockets.extend(diag::dump(dump.walked_states(), false)?);
    }
    Ok(sockets)
}

/// Whether a namespace with `inuse` hashed TCP sockets (listeners included), `tw` in TIME_WAIT
/// and `listeners` listening has any socket outside the listening hash.
fn walk_needed(inuse: u64, tw: u64, listeners: u64) -> bool {
    tw > 0 || inuse > listeners
}

/// Polls every target once. Namespaces that vanished meanwhile are skipped; errors for the
/// namespace the user named are returned, and so is the first error when no namespace at all
/// could be polled (e.g. after --user dropped the capabilities setns needs), so that it is
/// reported rather than silently leaving diagnosis without snapshots.
pub fn poll(targets: &Targets, dump: Dump) -> anyhow::Result<Vec<Snapshot>> {
    poll_these(targets, &targets.list(), dump).0
}

/// `poll` over `list`, the targets' namespaces as last looked up; also whether one of them could
/// not be polled (vanished, or its path now opens another namespace).
fn poll_these(
    targets: &Targets,
    list: &[netns::NetnsTarget],
    dump: Dump,
) -> (anyhow::Result<Vec<Snapshot>>, bool) {
    let mut out = Vec::new();
    let mut first_error = None;
    let mut failed = false;
    for t in list {
        match poll_one(t, dump) {
            Ok(s) => out.push(s),
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
    /// `closing_every`th poll (see [`dump_for`]).
    pub fn start(targets: Targets, every: Duration, closing_every: u64) -> Poller {
        let (tx, rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("tcptrace-poll".into())
            .spawn(move || {
                let mut list = Vec::new();
                let mut rescan = true;
                for n in 0u64.. {
                    if rescan || n.is_multiple_of(RESCAN_EVERY) {
                        list = targets.list();
                    }
                    let (r, failed) = poll_these(&targets, &list, dump_for(n, closing_every));
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
        assert_eq!(closing_every(s(2), s(3600)), TIME_WAIT_EVERY);
        let plan: Vec<Dump> = (0..11).map(|n| dump_for(n, 2)).collect();
        use Dump::*;
        assert_eq!(
            plan,
            [
                All, Listeners, Closing, Listeners, Closing, All, Closing, Listeners, Closing,
                Listeners, All
            ]
        );
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
    fn the_walk_is_skipped_only_when_it_would_find_nothing() {
        // A host's namespace with one listener and nothing else (this machine's, at rest).
        assert!(!walk_needed(1, 0, 1));
        assert!(!walk_needed(0, 0, 0));
        // A connection, or a TIME_WAIT socket, besides it.
        assert!(walk_needed(2, 0, 1));
        assert!(walk_needed(1, 3, 1));
    }
}
