//! Diagnosis: turns socket snapshots (sock_diag), kernel counters and the event stream into
//! answers: which listener overflows its accept queue and why, which process leaks sockets in
//! CLOSE_WAIT, whether local ports run out under TIME_WAIT, which FIN_WAIT2 sockets time out.
//!
//! Pure like the aggregator: snapshots carry their kernel timestamp, nothing reads a clock.
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

use crate::{
    event::{Event, EventKind, TcpState},
    owners::ProcessInfo,
    source::diag::DiagSocket,
};

/// One poll of one namespace.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ts_ns: u64,
    pub netns: u32,
    /// LISTEN (with drop counters), CLOSE_WAIT, FIN_WAIT2 and, if `time_wait_counted`,
    /// TIME_WAIT sockets; LISTEN only if `listeners_only`.
    pub sockets: Vec<DiagSocket>,
    /// Whether this poll dumped TIME_WAIT sockets (the per-remote breakdown is taken less
    /// often).
    pub time_wait_counted: bool,
    /// The namespace's TIME_WAIT count from /proc/net/sockstat, read every poll (None in
    /// recordings made before it was).
    pub time_wait_total: Option<u64>,
    /// Whether the poller looked up, by 4-tuple, every socket of the namespace's last walk that
    /// is no longer in FIN_WAIT2, and put those now in TIME_WAIT in `sockets`: FIN_WAIT2
    /// timeouts can be judged without the TIME_WAIT dump.
    pub fin_wait2_resolved: bool,
    /// Whether this poll asked for listening sockets only: the kernel answers those from its
    /// listening hash, without walking every connection; CLOSE_WAIT and FIN_WAIT2 sockets are
    /// then unknown, not gone.
    pub listeners_only: bool,
    pub counters: BTreeMap<&'static str, i64>,
    pub sysctls: BTreeMap<&'static str, String>,
}

#[derive(Clone, Debug)]
pub struct HealthConfig {
    pub close_wait_threshold_ns: u64,
    /// TIME_WAIT sockets towards one destination, as a share of the local port range, above
    /// which port exhaustion is reported.
    pub port_exhaustion_ratio: f64,
    /// How often namespaces are polled: one not polled for ten of these (and at least a
    /// minute) is gone.
    pub poll_interval_ns: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            close_wait_threshold_ns: 60_000_000_000,
            port_exhaustion_ratio: 0.8,
            poll_interval_ns: 2_000_000_000,
        }
    }
}

/// What `tcp_tw_reuse` does for a connect() that finds its local ports in TIME_WAIT: with TCP
/// timestamps on, it may take over a TIME_WAIT socket older than `tcp_tw_reuse_delay` (1 s
/// before Linux 6.14); `1` allows it towards any destination, `2` (the default) only over
/// loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TwReuse {
    reuse: u8,
    timestamps: bool,
    delay_ms: u64,
}

impl TwReuse {
    fn from_sysctls(sysctls: &BTreeMap<&'static str, String>) -> TwReuse {
        let num = |k: &str, default: u64| {
            sysctls
                .get(k)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        TwReuse {
            reuse: num("net.ipv4.tcp_tw_reuse", 2).min(2) as u8,
            timestamps: num("net.ipv4.tcp_timestamps", 1) != 0,
            delay_ms: num("net.ipv4.tcp_tw_reuse_delay", 1000),
        }
    }

    /// `what` (ports in TIME_WAIT towards `raddr`) and what it means for new connections.
    fn explain(self, what: &str, raddr: &str, size: u64) -> String {
        let loopback = raddr
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback());
        let applies = self.reuse == 1 || (self.reuse == 2 && loopback);
        match (applies, self.timestamps) {
            (true, true) => format!(
                "{what}: tcp_tw_reuse={} lets connect() take over those older than {} ms (tcp_timestamps is on), so new connections there fail with EADDRNOTAVAIL only past {size} per {} ms; reusing connections would still save their handshakes",
                self.reuse, self.delay_ms, self.delay_ms
            ),
            (true, false) => format!(
                "{what}: new connections there will fail with EADDRNOTAVAIL; tcp_tw_reuse={} would let connect() take over TIME_WAIT ports but needs net.ipv4.tcp_timestamps, which is 0; reuse connections, turn timestamps on, or widen the range",
                self.reuse
            ),
            (false, _) => format!(
                "{what}: new connections there will fail with EADDRNOTAVAIL; reuse connections, set net.ipv4.tcp_tw_reuse=1 (tcp_tw_reuse={} does not cover this destination), or widen the range",
                self.reuse
            ),
        }
    }
}

/// `net.ipv4.ip_local_port_range` (first, last), from a poll's sysctls.
pub fn local_port_range(sysctls: &BTreeMap<&'static str, String>) -> Option<(u64, u64)> {
    let mut it = sysctls
        .get("net.ipv4.ip_local_port_range")?
        .split(' ')
        .filter_map(|x| x.parse::<u64>().ok());
    Some((it.next()?, it.next()?))
}

/// How many local ports `ip_local_port_range` (first, last) holds.
pub fn port_range_size((lo, hi): (u64, u64)) -> u64 {
    hi.saturating_sub(lo) + 1
}

/// The fewest TIME_WAIT sockets towards one remote end that are reported as port exhaustion:
/// `ratio` of the local port range.
pub fn port_exhaustion_threshold(range: (u64, u64), ratio: f64) -> f64 {
    port_range_size(range) as f64 * ratio
}

/// A connection: network namespace inode, local and remote ends.
pub type Key = (u32, SocketAddr, SocketAddr);

#[derive(Clone, Debug)]
struct ListenerState {
    /// Not in its namespace's last snapshot (closed): kept for the report, evicted first.
    gone: bool,
    inode: u32,
    limit: u32,
    queue_len: u32,
    queue_peak: u32,
    drops_base: u32,
    drops_now: u32,
    times_full: u64,
}

#[derive(Clone, Debug)]
struct CloseWaitState {
    inode: u32,
    entered_ns: u64,
    lower_bound: bool,
    recv_q: u32,
}

/// A socket left in CLOSE_WAIT longer than the threshold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Leak {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub netns: u32,
    pub laddr: String,
    pub lport: u16,
    pub raddr: String,
    pub rport: u16,
    pub age_s: f64,
    pub age_is_lower_bound: bool,
    pub recv_q: u32,
    #[serde(skip)]
    pub inode: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LeaksByProcess {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub count: usize,
    pub growing: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerReport {
    pub netns: u32,
    pub addr: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub backlog_limit: u32,
    pub queue_len: u32,
    pub queue_peak: u32,
    /// Polls that found the accept queue at its limit.
    pub times_full: u64,
    pub drops: u32,
    pub diagnosis: String,
    #[serde(skip)]
    pub inode: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RemoteCount {
    pub raddr: String,
    pub rport: u16,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TimeWait {
    pub count: u64,
    pub by_remote: Vec<RemoteCount>,
    /// Destinations whose TIME_WAIT sockets use most of the local port range.
    pub port_exhaustion: Vec<String>,
}

/// Listeners remembered at most (closed ones are forgotten first).
const MAX_LISTENERS: usize = 4096;
/// Socket owners remembered before those of sockets no longer reported are dropped.
const MAX_OWNERS: usize = 8192;

pub struct Health {
    cfg: HealthConfig,
    listeners: BTreeMap<(u32, SocketAddr), ListenerState>,
    close_wait: rustc_hash::FxHashMap<Key, CloseWaitState>,
    /// When sockets entered CLOSE_WAIT, from the event stream (bounded).
    cw_entered: rustc_hash::FxHashMap<Key, u64>,
    fin_wait2: HashSet<Key>,
    pub fin_wait2_timeouts: u64,
    /// TIME_WAIT sockets per namespace, counted by remote end (a busy host has hundreds of
    /// thousands: only the counts are kept).
    time_wait: BTreeMap<u32, rustc_hash::FxHashMap<SocketAddr, u64>>,
    /// TIME_WAIT sockets per namespace as of its last poll (sockstat), newer than `time_wait`.
    time_wait_total: BTreeMap<u32, u64>,
    counters_base: BTreeMap<(u32, &'static str), i64>,
    counters_now: BTreeMap<(u32, &'static str), i64>,
    /// Counter deltas of namespaces that went away (their per-namespace entries are dropped).
    counters_gone: BTreeMap<&'static str, i64>,
    /// When each namespace was last polled.
    netns_seen_ns: HashMap<u32, u64>,
    pub sysctls: BTreeMap<&'static str, String>,
    seen_netns: HashSet<u32>,
    reported: HashSet<Key>,
    owners: HashMap<u32, ProcessInfo>,
    /// Leak counts per owner over the last polls, to tell a growing leak from a stable one.
    history: VecDeque<HashMap<Option<u32>, usize>>,
    /// When the last poll was taken: leaks are judged as of then, when owners were looked up.
    last_poll_ns: u64,
}

fn ip_port(a: &SocketAddr) -> (String, u16) {
    (a.ip().to_string(), a.port())
}

impl Health {
    pub fn new(cfg: HealthConfig) -> Health {
        Health {
            cfg,
            listeners: BTreeMap::new(),
            close_wait: Default::default(),
            cw_entered: Default::default(),
            fin_wait2: HashSet::new(),
            fin_wait2_timeouts: 0,
            time_wait: BTreeMap::new(),
            time_wait_total: BTreeMap::new(),
            counters_base: BTreeMap::new(),
            counters_now: BTreeMap::new(),
            counters_gone: BTreeMap::new(),
            netns_seen_ns: HashMap::new(),
            sysctls: BTreeMap::new(),
            seen_netns: HashSet::new(),
            reported: HashSet::new(),
            owners: HashMap::new(),
            history: VecDeque::new(),
            last_poll_ns: 0,
        }
    }

    /// Learns from the event stream when sockets enter and leave CLOSE_WAIT.
    pub fn on_event(&mut self, ev: &Event) {
        if let EventKind::State { old, new } = ev.kind {
            let key = (ev.netns, ev.local, ev.remote);
            if new == TcpState::CloseWait {
                if self.cw_entered.len() >= 1 << 18 {
                    self.cw_entered.clear();
                }
                self.cw_entered.insert(key, ev.ts_ns);
            } else if old == TcpState::CloseWait {
                self.cw_entered.remove(&key);
                self.close_wait.remove(&key);
            }
        }
    }

    /// Namespaces not polled for ten poll intervals (at least a minute) are gone (containers
    /// come and go for days): their
    /// counter deltas are kept in one sum, their other state is dropped. Listeners stay (bounded
    /// separately) so the report still names them.
    fn forget_gone_namespaces(&mut self, now_ns: u64) {
        let gone_after = (self.cfg.poll_interval_ns.saturating_mul(10)).max(60_000_000_000);
        let gone: Vec<u32> = self
            .netns_seen_ns
            .iter()
            .filter(|(_, t)| now_ns.saturating_sub(**t) > gone_after)
            .map(|(ns, _)| *ns)
            .collect();
        if gone.is_empty() {
            return;
        }
        let deltas: Vec<((u32, &'static str), i64)> = self
            .counters_now
            .iter()
            .filter(|((ns, _), _)| gone.contains(ns))
            .map(|(k, now)| (*k, now - self.counters_base.get(k).copied().unwrap_or(*now)))
            .collect();
        for ((_, name), d) in deltas {
            *self.counters_gone.entry(name).or_default() += d;
        }
        for ns in &gone {
            self.netns_seen_ns.remove(ns);
            self.time_wait.remove(ns);
            self.time_wait_total.remove(ns);
        }
        self.counters_now.retain(|(ns, _), _| !gone.contains(ns));
        self.counters_base.retain(|(ns, _), _| !gone.contains(ns));
        self.fin_wait2.retain(|k| !gone.contains(&k.0));
        self.close_wait.retain(|k, _| !gone.contains(&k.0));
        self.reported.retain(|k| !gone.contains(&k.0));
    }

    /// Events were lost: CLOSE_WAIT entry times from the stream may belong to sockets whose
    /// close went missing, so later ages are lower bounds from the polls instead.
    pub fn gap(&mut self) {
        self.cw_entered.clear();
    }

    pub fn set_owner(&mut self, inode: u32, p: ProcessInfo) {
        self.owners.insert(inode, p);
    }

    /// Inodes whose owner a report would show and is not known yet.
    pub fn inodes_wanting_owner(&self, now_ns: u64) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .listeners
            .values()
            .map(|l| l.inode)
            .chain(
                self.close_wait
                    .values()
                    .filter(|c| {
                        now_ns.saturating_sub(c.entered_ns) > self.cfg.close_wait_threshold_ns
                    })
                    .map(|c| c.inode),
            )
            .filter(|i| *i != 0 && !self.owners.contains_key(i))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Applies one poll; returns the sockets that crossed the CLOSE_WAIT threshold now (report
    /// them with [`Health::leak_report`] once their owners are known), then call
    /// [`Health::end_snapshot`].
    pub fn on_snapshot(&mut self, s: &Snapshot) -> Vec<Key> {
        let first = self.seen_netns.insert(s.netns);
        self.netns_seen_ns.insert(s.netns, s.ts_ns);
        self.last_poll_ns = self.last_poll_ns.max(s.ts_ns);
        for (name, v) in &s.counters {
            self.counters_base.entry((s.netns, name)).or_insert(*v);
            self.counters_now.insert((s.netns, name), *v);
        }
        if self.sysctls.is_empty() {
            self.sysctls = s.sysctls.clone();
        }
        if let Some(n) = s.time_wait_total {
            self.time_wait_total.insert(s.netns, n);
        }

        // Listeners.
        for d in s.sockets.iter().filter(|d| d.state == TcpState::Listen) {
            let key = (s.netns, d.local);
            let drops = d.drops.unwrap_or(0);
            let fresh = |drops_base| ListenerState {
                gone: false,
                inode: d.inode,
                limit: d.send_q,
                queue_len: 0,
                queue_peak: 0,
                drops_base,
                drops_now: drops,
                times_full: 0,
            };
            // A listener already there at the first poll: count drops from now on. One that
            // appeared later was created during the run: all its drops count.
            let l = self
                .listeners
                .entry(key)
                .or_insert_with(|| fresh(if first { drops } else { 0 }));
            if l.inode != d.inode {
                // Same address, new socket.
                *l = fresh(0);
            }
            l.limit = d.send_q;
            l.queue_len = d.recv_q;
            l.queue_peak = l.queue_peak.max(d.recv_q);
            l.drops_now = drops;
            if d.recv_q >= d.send_q && d.send_q > 0 {
                l.times_full += 1;
            }
        }
        // Listeners that are gone stay in the report with their last figures, up to a bound
        // (namespaces and listeners come and go for days on a container host).
        let present: HashSet<SocketAddr> = s
            .sockets
            .iter()
            .filter(|d| d.state == TcpState::Listen)
            .map(|d| d.local)
            .collect();
        for ((ns, addr), l) in self.listeners.iter_mut() {
            if *ns == s.netns {
                l.gone = !present.contains(addr);
            }
        }
        if self.listeners.len() > MAX_LISTENERS {
            let mut excess = self.listeners.len() - MAX_LISTENERS;
            self.listeners.retain(|_, l| {
                if excess > 0 && l.gone {
                    excess -= 1;
                    return false;
                }
                true
            });
        }

        let mut crossed = Vec::new();
        if s.listeners_only {
            return crossed;
        }

        // CLOSE_WAIT.
        let mut now_cw = HashSet::new();
        for d in s.sockets.iter().filter(|d| d.state == TcpState::CloseWait) {
            let key = (s.netns, d.local, d.remote);
            now_cw.insert(key);
            // Exact entry times: from the event stream, or from the kernel's socket storage
            // (aggregation mode); else the first poll that saw it (a lower bound).
            let from_event = self.cw_entered.get(&key).copied().or(d.since_ns);
            let c = self.close_wait.entry(key).or_insert(CloseWaitState {
                inode: d.inode,
                entered_ns: from_event.unwrap_or(s.ts_ns),
                lower_bound: from_event.is_none(),
                recv_q: d.recv_q,
            });
            c.recv_q = d.recv_q;
            if let Some(t) = from_event {
                c.entered_ns = t;
                c.lower_bound = false;
            }
            let age = s.ts_ns.saturating_sub(c.entered_ns);
            if age > self.cfg.close_wait_threshold_ns && self.reported.insert(key) {
                crossed.push(key);
            }
        }
        self.close_wait
            .retain(|k, _| k.0 != s.netns || now_cw.contains(k));
        self.reported
            .retain(|k| k.0 != s.netns || now_cw.contains(k));

        // TIME_WAIT and FIN_WAIT2 timeouts: a FIN_WAIT2 socket that vanished without turning
        // into TIME_WAIT timed out waiting for the peer's FIN (tcp_fin_timeout).
        let fw2_now: HashSet<Key> = s
            .sockets
            .iter()
            .filter(|d| d.state == TcpState::FinWait2)
            .map(|d| (s.netns, d.local, d.remote))
            .collect();
        let tw = s.sockets.iter().filter(|d| d.state == TcpState::TimeWait);
        if s.time_wait_counted || s.fin_wait2_resolved {
            // Judged only when TIME_WAIT is known (dumped, or the vanished ones looked up): did
            // the vanished ones become TIME_WAIT?
            let gone: Vec<Key> = self
                .fin_wait2
                .iter()
                .filter(|k| k.0 == s.netns && !fw2_now.contains(*k))
                .copied()
                .collect();
            // There can be hundreds of thousands of TIME_WAIT sockets: their 4-tuples are only
            // gathered when a FIN_WAIT2 socket went away, and counted with a fast hash.
            let tw_set: rustc_hash::FxHashSet<(SocketAddr, SocketAddr)> = if gone.is_empty() {
                Default::default()
            } else {
                tw.clone().map(|d| (d.local, d.remote)).collect()
            };
            for k in gone {
                if !tw_set.contains(&(k.1, k.2)) {
                    self.fin_wait2_timeouts += 1;
                }
                self.fin_wait2.remove(&k);
            }
        }
        if s.time_wait_counted {
            let mut by_remote = rustc_hash::FxHashMap::default();
            for d in tw {
                *by_remote.entry(d.remote).or_default() += 1;
            }
            self.time_wait.insert(s.netns, by_remote);
        }
        self.fin_wait2.extend(fw2_now);
        crossed
    }

    /// A leak found by [`Health::on_snapshot`], with what is known of its owner now.
    pub fn leak_report(&self, key: &Key, now_ns: u64) -> Option<Leak> {
        self.close_wait
            .contains_key(key)
            .then(|| self.leak(key, now_ns))
    }

    /// Closes a poll: remembers leak counts per process (to tell growing leaks).
    pub fn end_snapshot(&mut self, now_ns: u64) {
        let mut per_owner: HashMap<Option<u32>, usize> = HashMap::new();
        for l in self.leaks(now_ns) {
            *per_owner.entry(l.pid).or_default() += 1;
        }
        self.history.push_back(per_owner);
        if self.history.len() > 5 {
            self.history.pop_front();
        }
        self.forget_gone_namespaces(now_ns);
        // Owners of sockets no longer reported are forgotten once there are many (days of
        // listener and connection churn would otherwise keep every one).
        if self.owners.len() > MAX_OWNERS {
            let wanted: HashSet<u32> = self
                .listeners
                .values()
                .map(|l| l.inode)
                .chain(self.close_wait.values().map(|c| c.inode))
                .collect();
            self.owners.retain(|inode, _| wanted.contains(inode));
        }
    }

    fn leak(&self, key: &Key, now_ns: u64) -> Leak {
        let c = &self.close_wait[key];
        let owner = self.owners.get(&c.inode);
        let (laddr, lport) = ip_port(&key.1);
        let (raddr, rport) = ip_port(&key.2);
        Leak {
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.clone()),
            cgroup: owner.and_then(|o| o.cgroup.clone()),
            netns: key.0,
            laddr,
            lport,
            raddr,
            rport,
            age_s: (now_ns.saturating_sub(c.entered_ns) as f64 / 1e7).round() / 100.0,
            age_is_lower_bound: c.lower_bound,
            recv_q: c.recv_q,
            inode: c.inode,
        }
    }

    /// Sockets in CLOSE_WAIT for longer than the threshold, oldest first, as of the last poll
    /// before `now_ns` (the one that looked their owners up).
    pub fn leaks(&self, now_ns: u64) -> Vec<Leak> {
        let now_ns = now_ns.min(self.last_poll_ns);
        let mut v: Vec<Leak> = self
            .close_wait
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.entered_ns) > self.cfg.close_wait_threshold_ns)
            .map(|(k, _)| self.leak(k, now_ns))
            .collect();
        v.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
        v
    }

    pub fn leaks_by_process(&self, now_ns: u64) -> Vec<LeaksByProcess> {
        let mut by: BTreeMap<Option<u32>, (Option<String>, usize)> = BTreeMap::new();
        for l in self.leaks(now_ns) {
            let e = by.entry(l.pid).or_insert((l.comm.clone(), 0));
            e.1 += 1;
        }
        by.into_iter()
            .map(|(pid, (comm, count))| {
                let oldest = self
                    .history
                    .front()
                    .and_then(|h| h.get(&pid).copied())
                    .unwrap_or(0);
                LeaksByProcess {
                    pid,
                    comm,
                    count,
                    growing: self.history.len() > 1 && count > oldest,
                }
            })
            .collect()
    }

    fn sysctl_u64(&self, name: &str) -> Option<u64> {
        self.sysctls.get(name)?.split(' ').next()?.parse().ok()
    }

    /// Deltas of the kernel counters since the first poll, summed over namespaces.
    pub fn counter_deltas(&self) -> BTreeMap<&'static str, i64> {
        let mut out = self.counters_gone.clone();
        for ((ns, name), now) in &self.counters_now {
            let base = self
                .counters_base
                .get(&(*ns, *name))
                .copied()
                .unwrap_or(*now);
            *out.entry(*name).or_default() += now - base;
        }
        out
    }

    /// Every listener seen, with what is wrong with it. `synack` gives SYN-ACK retransmits per
    /// local port (from the aggregator).
    pub fn listeners(&self, synack_by_port: &BTreeMap<u16, u64>) -> Vec<ListenerReport> {
        let deltas = self.counter_deltas();
        let somaxconn = self.sysctl_u64("net.core.somaxconn");
        let abort = self.sysctl_u64("net.ipv4.tcp_abort_on_overflow") == Some(1);
        let syn_backlog = self.sysctl_u64("net.ipv4.tcp_max_syn_backlog");
        let cookies_sent = deltas.get("SyncookiesSent").copied().unwrap_or(0);
        let reqq_drops = deltas.get("TCPReqQFullDrop").copied().unwrap_or(0);
        self.listeners
            .iter()
            .map(|((ns, addr), l)| {
                let owner = self.owners.get(&l.inode);
                let drops = l.drops_now.saturating_sub(l.drops_base);
                let synack = synack_by_port.get(&addr.port()).copied().unwrap_or(0);
                let limit_why = match somaxconn {
                    Some(m) if u64::from(l.limit) == m => format!("{} = net.core.somaxconn", l.limit),
                    Some(m) => format!("{} = listen() backlog; net.core.somaxconn={m}", l.limit),
                    None => l.limit.to_string(),
                };
                let mut d = Vec::new();
                if drops > 0 || l.queue_peak >= l.limit {
                    d.push(format!(
                        "accept queue of {addr} (limit {limit_why}) full {} times, {drops} SYNs dropped: the application accepts too slowly, or raise the listen backlog and net.core.somaxconn",
                        l.times_full
                    ));
                    if abort {
                        d.push("net.ipv4.tcp_abort_on_overflow=1: clients get a RST instead of a retry".into());
                    }
                }
                if cookies_sent > 0 || reqq_drops > 0 {
                    d.push(format!(
                        "SYN queue overflowing (net.ipv4.tcp_max_syn_backlog={}): {cookies_sent} SYN cookies sent, {reqq_drops} SYNs dropped{}",
                        syn_backlog.map_or("?".into(), |v| v.to_string()),
                        if synack > 10 { format!(", {synack} SYN-ACKs retransmitted to sources that never answer: a SYN flood") } else { String::new() }
                    ));
                } else if synack > 0 {
                    d.push(format!(
                        "{synack} SYN-ACKs retransmitted: clients' final ACKs are lost or late (check the path, or a SYN flood if the sources never complete)"
                    ));
                }
                let (a, port) = ip_port(addr);
                ListenerReport {
                    netns: *ns,
                    addr: a,
                    port,
                    pid: owner.map(|o| o.pid),
                    comm: owner.map(|o| o.comm.clone()),
                    cgroup: owner.and_then(|o| o.cgroup.clone()),
                    backlog_limit: l.limit,
                    queue_len: l.queue_len,
                    queue_peak: l.queue_peak,
                    times_full: l.times_full,
                    drops,
                    diagnosis: if d.is_empty() { "ok".into() } else { d.join("; ") },
                    inode: l.inode,
                }
            })
            .collect()
    }

    /// TIME_WAIT sockets: the count as of the last poll, the breakdown by remote end (and the
    /// port exhaustion judged from it) as of the last poll that dumped them.
    pub fn time_wait(&self) -> TimeWait {
        let mut by: HashMap<(IpAddr, u16), u64> = HashMap::new();
        let mut count: u64 = self.time_wait_total.values().sum();
        for (ns, tws) in &self.time_wait {
            let counted = self.time_wait_total.contains_key(ns);
            for (r, n) in tws {
                if !counted {
                    count += n;
                }
                *by.entry((r.ip(), r.port())).or_default() += n;
            }
        }
        let mut v: Vec<RemoteCount> = by
            .into_iter()
            .map(|((ip, port), count)| RemoteCount {
                raddr: ip.to_string(),
                rport: port,
                count,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.raddr.cmp(&b.raddr)));
        let range = local_port_range(&self.sysctls);
        let mut exhaustion = Vec::new();
        if let Some((lo, hi)) = range {
            let size = port_range_size((lo, hi));
            let threshold = port_exhaustion_threshold((lo, hi), self.cfg.port_exhaustion_ratio);
            let reuse = TwReuse::from_sysctls(&self.sysctls);
            for r in &v {
                if r.count as f64 >= threshold {
                    let what = format!(
                        "{} of {size} local ports (ip_local_port_range {lo} {hi}) are in TIME_WAIT towards {}:{}",
                        r.count, r.raddr, r.rport
                    );
                    exhaustion.push(reuse.explain(&what, &r.raddr, size));
                }
            }
        }
        v.truncate(20);
        TimeWait {
            count,
            by_remote: v,
            port_exhaustion: exhaustion,
        }
    }
}

/// What a reset in a given state usually means, for the operator.
pub fn reset_meaning(state: &str, received: bool) -> &'static str {
    match (state, received) {
        ("SYN_SENT", true) => {
            "connection refused: nothing listens on the remote port (or a firewall rejects)"
        }
        ("NO_SOCKET", false) => {
            "a segment arrived for a port nobody listens on (or a connection this host already forgot)"
        }
        ("ESTABLISHED", false) => {
            "this host aborted a connection: the application closed with unread data or with SO_LINGER 0"
        }
        ("ESTABLISHED", true) => {
            "the peer aborted the connection (crash, SO_LINGER 0, or closed with unread data)"
        }
        ("CLOSE_WAIT", false) | ("LAST_ACK", false) => {
            "closed with unread data after the peer's FIN"
        }
        ("FIN_WAIT1", true) | ("FIN_WAIT2", true) => {
            "the peer reset while this side was closing (it had unread data, or had already gone)"
        }
        ("SYN_RECV", _) | ("NEW_SYN_RECV", _) => {
            "handshake aborted (tcp_abort_on_overflow with a full accept queue, or a bad final ACK)"
        }
        _ => "abortive close",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn sock(
        state: TcpState,
        l: &str,
        r: &str,
        inode: u32,
        rq: u32,
        sq: u32,
        drops: Option<u32>,
    ) -> DiagSocket {
        DiagSocket {
            state,
            local: l.parse().unwrap(),
            remote: r.parse().unwrap(),
            inode,
            uid: 0,
            recv_q: rq,
            send_q: sq,
            drops,
            since_ns: None,
            bound_if: 0,
        }
    }

    fn snap(ts: u64, sockets: Vec<DiagSocket>, overflows: i64) -> Snapshot {
        Snapshot {
            ts_ns: ts,
            netns: 7,
            sockets,
            time_wait_counted: true,
            listeners_only: false,
            counters: BTreeMap::from([("ListenDrops", overflows), ("ListenOverflows", overflows)]),
            sysctls: BTreeMap::from([
                ("net.core.somaxconn", "4096".to_string()),
                ("net.ipv4.ip_local_port_range", "32768 32777".to_string()),
            ]),
            ..Snapshot::default()
        }
    }

    #[test]
    fn listener_drops_are_deltas_and_diagnosed() {
        let mut h = Health::new(HealthConfig::default());
        h.on_snapshot(&snap(
            0,
            vec![sock(
                TcpState::Listen,
                "0.0.0.0:80",
                "0.0.0.0:0",
                5,
                0,
                1,
                Some(10),
            )],
            100,
        ));
        h.on_snapshot(&snap(
            S,
            vec![sock(
                TcpState::Listen,
                "0.0.0.0:80",
                "0.0.0.0:0",
                5,
                2,
                1,
                Some(51),
            )],
            141,
        ));
        let l = &h.listeners(&BTreeMap::new())[0];
        assert_eq!(l.drops, 41);
        assert_eq!(l.queue_peak, 2);
        assert_eq!(l.backlog_limit, 1);
        assert_eq!(l.times_full, 1);
        assert!(l.diagnosis.contains("41 SYNs dropped"), "{}", l.diagnosis);
        assert!(
            l.diagnosis
                .contains("listen() backlog; net.core.somaxconn=4096"),
            "{}",
            l.diagnosis
        );
        assert_eq!(h.counter_deltas()["ListenDrops"], 41);
    }

    #[test]
    fn close_wait_leaks_cross_the_threshold_once() {
        let mut h = Health::new(HealthConfig {
            close_wait_threshold_ns: 10 * S,
            ..Default::default()
        });
        let cw = |rq| {
            sock(
                TcpState::CloseWait,
                "10.0.0.1:80",
                "10.0.0.2:5000",
                9,
                rq,
                0,
                None,
            )
        };
        // Seen before any event: age is a lower bound from the first poll.
        assert!(h.on_snapshot(&snap(0, vec![cw(3)], 0)).is_empty());
        assert!(h.on_snapshot(&snap(5 * S, vec![cw(3)], 0)).is_empty());
        let crossed = h.on_snapshot(&snap(11 * S, vec![cw(4)], 0));
        assert_eq!(crossed.len(), 1);
        let leak = h.leak_report(&crossed[0], 11 * S).unwrap();
        assert!(leak.age_is_lower_bound);
        assert_eq!(leak.recv_q, 4);
        assert!(
            h.on_snapshot(&snap(12 * S, vec![cw(4)], 0)).is_empty(),
            "reported once"
        );
        assert_eq!(h.leaks(12 * S).len(), 1);
        // It closes: no longer a leak.
        h.on_snapshot(&snap(13 * S, vec![], 0));
        assert!(h.leaks(13 * S).is_empty());
    }

    #[test]
    fn listener_only_polls_leave_close_wait_and_fin_wait2_as_they_were() {
        let mut h = Health::new(HealthConfig {
            close_wait_threshold_ns: 10 * S,
            ..Default::default()
        });
        let at = |state| sock(state, "10.0.0.1:80", "10.0.0.2:5000", 9, 0, 0, None);
        let fw2 = sock(
            TcpState::FinWait2,
            "10.0.0.1:81",
            "10.0.0.2:5001",
            10,
            0,
            0,
            None,
        );
        h.on_snapshot(&snap(0, vec![at(TcpState::CloseWait), fw2], 0));
        let listeners = |ts| Snapshot {
            listeners_only: true,
            time_wait_counted: false,
            ..snap(ts, vec![], 0)
        };
        // Neither is in a listeners-only poll: both are unknown there, not gone.
        assert!(h.on_snapshot(&listeners(5 * S)).is_empty());
        assert_eq!(h.close_wait.len(), 1);
        assert!(h.on_snapshot(&listeners(11 * S)).is_empty());
        assert_eq!(h.fin_wait2_timeouts, 0);
        // The next full poll finds the leak, aged from the first one, and the FIN_WAIT2 socket
        // gone without a TIME_WAIT successor.
        let crossed = h.on_snapshot(&snap(12 * S, vec![at(TcpState::CloseWait)], 0));
        assert_eq!(crossed.len(), 1);
        assert_eq!(h.leak_report(&crossed[0], 12 * S).unwrap().age_s, 12.0);
        assert_eq!(h.fin_wait2_timeouts, 1);
    }

    #[test]
    fn close_wait_age_from_the_event_is_exact() {
        let mut h = Health::new(HealthConfig {
            close_wait_threshold_ns: 10 * S,
            ..Default::default()
        });
        h.on_snapshot(&snap(0, vec![], 0));
        h.on_event(&Event {
            pid: 0,
            tid: 0,
            netns: 7,
            local: "10.0.0.1:80".parse().unwrap(),
            remote: "10.0.0.2:5000".parse().unwrap(),
            ..Event::test_state(2 * S, 1, TcpState::Established, TcpState::CloseWait)
        });
        let cw = sock(
            TcpState::CloseWait,
            "10.0.0.1:80",
            "10.0.0.2:5000",
            9,
            0,
            0,
            None,
        );
        let crossed = h.on_snapshot(&snap(13 * S, vec![cw], 0));
        assert_eq!(crossed.len(), 1);
        h.set_owner(
            9,
            ProcessInfo {
                pid: 42,
                comm: "leaky".into(),
                cgroup: None,
            },
        );
        h.end_snapshot(13 * S);
        let leak = h.leak_report(&crossed[0], 13 * S).unwrap();
        assert!(!leak.age_is_lower_bound);
        assert_eq!(leak.age_s, 11.0);
        assert_eq!(leak.pid, Some(42));
        let by = h.leaks_by_process(13 * S);
        assert_eq!(by[0].pid, Some(42));
        assert_eq!(by[0].count, 1);
    }

    #[test]
    fn time_wait_counts_and_port_exhaustion() {
        let mut h = Health::new(HealthConfig::default());
        let tws: Vec<DiagSocket> = (0..9)
            .map(|i| {
                sock(
                    TcpState::TimeWait,
                    &format!("10.0.0.1:{}", 32768 + i),
                    "10.0.0.9:80",
                    0,
                    0,
                    0,
                    None,
                )
            })
            .collect();
        h.on_snapshot(&snap(0, tws, 0));
        let tw = h.time_wait();
        assert_eq!(tw.count, 9);
        assert_eq!(tw.by_remote[0].count, 9);
        assert_eq!(tw.port_exhaustion.len(), 1, "9 of 10 ports");
        // tcp_tw_reuse absent (read as its default, 2: loopback only), remote 10.0.0.9.
        let w = &tw.port_exhaustion[0];
        assert!(w.starts_with("9 of 10 local ports (ip_local_port_range 32768 32777) are in TIME_WAIT towards 10.0.0.9:80: new connections there will fail"), "{w}");
        assert!(w.contains("set net.ipv4.tcp_tw_reuse=1 (tcp_tw_reuse=2 does not cover"), "{w}");
    }

    #[test]
    fn port_exhaustion_says_what_tcp_tw_reuse_does() {
        let explain = |reuse: &str, ts: &str, delay: Option<&str>, raddr: &str| {
            let mut sysctls = BTreeMap::from([
                ("net.ipv4.tcp_tw_reuse", reuse.to_string()),
                ("net.ipv4.tcp_timestamps", ts.to_string()),
            ]);
            if let Some(d) = delay {
                sysctls.insert("net.ipv4.tcp_tw_reuse_delay", d.to_string());
            }
            TwReuse::from_sysctls(&sysctls).explain("N ports", raddr, 64512)
        };
        // Reuse on everywhere, timestamps on: connects fail only past the range per delay.
        let w = explain("1", "1", Some("1"), "10.0.0.9");
        assert!(
            w.contains("tcp_tw_reuse=1 lets connect() take over those older than 1 ms")
                && w.contains("only past 64512 per 1 ms"),
            "{w}"
        );
        // Before 6.14 there is no delay sysctl: 1 s.
        let w = explain("1", "2", None, "10.0.0.9");
        assert!(w.contains("older than 1000 ms"), "{w}");
        // The default 2 covers loopback destinations only, IPv4-mapped ones included.
        for lo in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let w = explain("2", "1", None, lo);
            assert!(w.contains("tcp_tw_reuse=2 lets connect()"), "{lo}: {w}");
        }
        let w = explain("2", "1", None, "192.0.2.1");
        assert!(w.contains("will fail with EADDRNOTAVAIL") && w.contains("does not cover"), "{w}");
        let w = explain("0", "1", None, "127.0.0.1");
        assert!(w.contains("set net.ipv4.tcp_tw_reuse=1 (tcp_tw_reuse=0"), "{w}");
        // Reuse without timestamps does nothing.
        let w = explain("1", "0", None, "10.0.0.9");
        assert!(w.contains("needs net.ipv4.tcp_timestamps, which is 0"), "{w}");
    }

    #[test]
    fn fin_wait2_that_vanishes_without_time_wait_timed_out() {
        let mut h = Health::new(HealthConfig::default());
        let fw2 = |p: u16| {
            sock(
                TcpState::FinWait2,
                &format!("10.0.0.1:{p}"),
                "10.0.0.9:80",
                0,
                0,
                0,
                None,
            )
        };
        h.on_snapshot(&snap(0, vec![fw2(1), fw2(2)], 0));
        let tw = sock(
            TcpState::TimeWait,
            "10.0.0.1:2",
            "10.0.0.9:80",
            0,
            0,
            0,
            None,
        );
        h.on_snapshot(&snap(S, vec![tw], 0));
        assert_eq!(h.fin_wait2_timeouts, 1);

        // Without the TIME_WAIT dump: the poller looked up the vanished ones by 4-tuple.
        let walk = |ts, sockets, resolved| Snapshot {
            time_wait_counted: false,
            fin_wait2_resolved: resolved,
            ..snap(ts, sockets, 0)
        };
        h.on_snapshot(&walk(2 * S, vec![fw2(3), fw2(4), fw2(5)], true));
        // Not resolved: nothing judged, the vanished stay tracked.
        h.on_snapshot(&walk(3 * S, vec![fw2(5)], false));
        assert_eq!(h.fin_wait2_timeouts, 1);
        let tw3 = DiagSocket {
            local: "10.0.0.1:3".parse().unwrap(),
            ..tw
        };
        // 3 became TIME_WAIT, 4 timed out, 5 is still in FIN_WAIT2.
        h.on_snapshot(&walk(4 * S, vec![fw2(5), tw3], true));
        assert_eq!(h.fin_wait2_timeouts, 2);
        // The looked-up TIME_WAIT socket is no breakdown: the last dump's stays.
        assert_eq!(h.time_wait().by_remote[0].count, 1);
    }

    #[test]
    fn time_wait_count_is_the_latest_poll_s_the_breakdown_the_last_dump_s() {
        let mut h = Health::new(HealthConfig::default());
        let tw = |p: u16, r: &str| sock(TcpState::TimeWait, &format!("10.0.0.1:{p}"), r, 0, 0, 0, None);
        let dump = vec![tw(1, "10.0.0.9:80"), tw(2, "10.0.0.9:80"), tw(3, "10.0.0.8:80")];
        h.on_snapshot(&Snapshot {
            time_wait_total: Some(3),
            ..snap(0, dump, 0)
        });
        // A later poll counts 9 without dumping them.
        h.on_snapshot(&Snapshot {
            time_wait_counted: false,
            time_wait_total: Some(9),
            ..snap(S, vec![], 0)
        });
        // Another namespace, from a recording without the count: its dump counts.
        h.on_snapshot(&Snapshot {
            netns: 8,
            ..snap(S, vec![tw(4, "10.0.0.9:80")], 0)
        });
        let t = h.time_wait();
        assert_eq!(t.count, 10);
        let by: Vec<u64> = t.by_remote.iter().map(|r| r.count).collect();
        assert_eq!(by, [3, 1]);
    }

    #[test]
    fn closed_listeners_are_forgotten_beyond_the_bound_open_ones_never() {
        let mut h = Health::new(HealthConfig::default());
        let many: Vec<DiagSocket> = (0..5000u32)
            .map(|i| {
                let l = format!("10.0.{}.{}:80", i / 250, i % 250);
                sock(TcpState::Listen, &l, "0.0.0.0:0", i + 1, 0, 128, Some(0))
            })
            .collect();
        h.on_snapshot(&snap(S, many, 0));
        assert_eq!(h.listeners.len(), 5000, "open listeners are all kept");
        let one = vec![sock(
            TcpState::Listen,
            "127.0.0.1:8080",
            "0.0.0.0:0",
            9,
            0,
            128,
            Some(0),
        )];
        h.on_snapshot(&snap(2 * S, one, 0));
        assert_eq!(h.listeners.len(), MAX_LISTENERS);
        assert!(
            h.listeners
                .contains_key(&(7, "127.0.0.1:8080".parse().unwrap()))
        );
    }

    #[test]
    fn namespaces_that_go_away_leave_their_counter_deltas_and_nothing_else() {
        let mut h = Health::new(HealthConfig::default());
        let mut a = snap(S, vec![], 10);
        a.netns = 1;
        h.on_snapshot(&a);
        h.end_snapshot(S);
        let mut a2 = snap(2 * S, vec![], 14);
        a2.netns = 1;
        h.on_snapshot(&a2);
        h.end_snapshot(2 * S);
        let before = h.counter_deltas();
        // Only namespace 2 is polled from now on; namespace 1 is gone after a minute.
        for t in [3u64, 30, 70, 100] {
            let mut b = snap(t * S, vec![], 0);
            b.netns = 2;
            h.on_snapshot(&b);
            h.end_snapshot(t * S);
        }
        assert!(
            !h.counters_now.keys().any(|(ns, _)| *ns == 1),
            "namespace 1 dropped"
        );
        assert_eq!(h.counter_deltas(), before, "its deltas are kept");
    }
}
