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
    /// Every namespace in use, looked up again at each poll.
    All,
}

impl Targets {
    fn list(&self) -> Vec<netns::NetnsTarget> {
        match self {
            Targets::One(t) => vec![t.clone()],
            Targets::All => netns::all_namespaces(),
        }
    }
}

/// The states a poll asks for: what diagnosis needs, not every socket. TIME_WAIT sockets can
/// number in the hundreds of thousands on a busy host, so only every [`TIME_WAIT_EVERY`]th poll
/// (and the last one) dumps them.
fn wanted(time_wait: bool) -> netlink_packet_sock_diag::inet::StateFlags {
    let mut s = vec![TcpState::Listen, TcpState::CloseWait, TcpState::FinWait2];
    if time_wait {
        s.push(TcpState::TimeWait);
    }
    diag::states(&s)
}

/// Every how many polls TIME_WAIT sockets are dumped.
pub const TIME_WAIT_EVERY: u64 = 5;

fn poll_one(t: &netns::NetnsTarget, time_wait: bool) -> anyhow::Result<Snapshot> {
    let inode = t.inode;
    netns::run_in(&t.path, move || {
        let ts_ns = monotonic_now_ns();
        Ok(Snapshot {
            ts_ns,
            netns: inode,
            time_wait_counted: time_wait,
            sockets: diag::dump(wanted(time_wait), true)?,
            counters: procnet::read_counters()?,
            sysctls: procnet::read_sysctls(),
        })
    })
}

/// Polls every target once. Namespaces that vanished meanwhile are skipped; errors for the
/// namespace the user named are returned, and so is the first error when no namespace at all
/// could be polled (e.g. after --user dropped the capabilities setns needs), so that it is
/// reported rather than silently leaving diagnosis without snapshots.
pub fn poll(targets: &Targets, time_wait: bool) -> anyhow::Result<Vec<Snapshot>> {
    let mut out = Vec::new();
    let mut first_error = None;
    for t in targets.list() {
        match poll_one(&t, time_wait) {
            Ok(s) => out.push(s),
            Err(e) if matches!(targets, Targets::One(_)) => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) if out.is_empty() => Err(e.context(
            "no network namespace could be polled: listener, leak and TIME_WAIT diagnosis is off (after --user, tcptrace can no longer enter other namespaces: run without --user to keep it)",
        )),
        _ => Ok(out),
    }
}

pub struct Poller {
    pub rx: mpsc::Receiver<anyhow::Result<Vec<Snapshot>>>,
    stop: mpsc::Sender<()>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Poller {
    /// Starts polling now and then every `every`.
    pub fn start(targets: Targets, every: Duration) -> Poller {
        let (tx, rx) = mpsc::channel();
        let (stop, stop_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("tcptrace-poll".into())
            .spawn(move || {
                for n in 0u64.. {
                    if tx.send(poll(&targets, n % TIME_WAIT_EVERY == 0)).is_err() {
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
