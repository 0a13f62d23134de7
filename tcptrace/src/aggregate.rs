//! The aggregator: typed events in, measurements out.
//!
//! Pure by design: no I/O and no clock of its own (time is the events' kernel timestamps and the
//! start/end instants the driver passes in), so a recording replays to exactly the figures the
//! live run produced, and unit tests feed it synthetic streams.
//!
//! What it measures (see the README for definitions): active and passive handshake latency,
//! time spent in each TCP state, connection lifetime, opens and closes, retransmits by the state
//! they happened in, resets sent and received by state.
use std::{collections::BTreeMap, net::SocketAddr};

use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use crate::{
    event::{Event, EventKind, TcpState},
    filter::Filter,
    hist::{Hist, HistSummary},
    lifecycle::{Life, Outcome, Table, TableStats},
};

/// How passive handshake latency is measured on this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassiveMethod {
    /// SYN arrival (sock_ops, request socket) to the accepted socket's ESTABLISHED: the full
    /// server-side handshake, SYN-ACK retransmits included.
    SockOps,
    /// What the kernel notes in the accepted socket at ESTABLISHED (the first SYN-ACK's round
    /// trip, or the time since it when SYN-ACKs were retransmitted on timeout): the default with
    /// in-kernel aggregation, and where no cgroup v2 is mounted; it starts at the first SYN-ACK,
    /// not at the SYN.
    Srtt,
}

impl PassiveMethod {
    pub fn name(self) -> &'static str {
        match self {
            PassiveMethod::SockOps => "sock_ops",
            PassiveMethod::Srtt => "srtt",
        }
    }
}

#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    pub filter: Filter,
    pub max_sockets: usize,
    /// Most ports broken out in `by_port` / by remote port; the rest are counted in `other`.
    pub max_ports: usize,
    /// Most SYNs waiting for their accepted socket (bounded against SYN floods).
    pub max_pending_syns: usize,
    pub passive_method: PassiveMethod,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            filter: Filter::default(),
            max_sockets: Table::DEFAULT_CAP,
            max_ports: 64,
            max_pending_syns: 1 << 16,
            passive_method: PassiveMethod::SockOps,
        }
    }
}

/// Retransmits by the state they happened in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retransmits {
    /// SYN_SENT: the SYN was retransmitted (no SYN-ACK came back in time).
    pub syn: u64,
    /// SYN-ACKs retransmitted by a listener (the client's final ACK did not arrive in time).
    pub synack: u64,
    /// ESTABLISHED and CLOSE_WAIT: data.
    pub data: u64,
    /// FIN_WAIT1, CLOSING, LAST_ACK: the FIN (or data queued before it).
    pub fin: u64,
    pub total: u64,
}

/// One histogram per TCP state the state tracepoint reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dwell {
    by_state: BTreeMap<TcpState, Hist>,
}

impl Dwell {
    fn record(&mut self, state: TcpState, ns: u64) {
        self.by_state.entry(state).or_default().record_ns(ns);
    }

    pub(crate) fn entry(&mut self, state: TcpState) -> &mut Hist {
        self.by_state.entry(state).or_default()
    }

    pub fn get(&self, state: TcpState) -> Option<&Hist> {
        self.by_state.get(&state)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TcpState, &Hist)> {
        self.by_state.iter().map(|(s, h)| (*s, h))
    }

    pub fn summaries(&self) -> BTreeMap<&'static str, HistSummary> {
        self.by_state
            .iter()
            .map(|(s, h)| (s.name(), h.summary()))
            .collect()
    }
}

/// What is known per local (listening) port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortStats {
    pub handshake_passive: Hist,
    pub dwell: Dwell,
    /// The listener's accept queue length when each SYN arrived (a count, not a duration).
    pub accept_queue_at_syn: Hist,
    /// The listener's SYN queue length (request sockets awaiting their final ACK) then.
    pub syn_queue_at_syn: Hist,
}

#[derive(Clone, Copy, Debug)]
struct PendingSyn {
    ts_ns: u64,
    synack_retransmits: u32,
    /// The gap epoch when the SYN arrived.
    epoch: u32,
    /// Whether the SYN passes the filters (what `pending_syns` reports).
    matched: bool,
}

#[derive(Clone, Debug)]
pub struct Aggregator {
    cfg: AggregatorConfig,
    table: Table,
    pub start_ns: Option<u64>,
    pub end_ns: Option<u64>,
    /// Events that passed the filter.
    pub matched: u64,
    pub active: Hist,
    /// Active handshakes by the number of SYN retransmits they needed.
    pub active_by_syn_retransmits: BTreeMap<u32, u64>,
    pub active_by_remote_port: BTreeMap<u16, Hist>,
    pub passive: Hist,
    /// Passive handshakes by the number of SYN-ACK retransmits they needed (sock_ops method).
    pub passive_by_synack_retransmits: BTreeMap<u32, u64>,
    pub dwell: Dwell,
    pub by_port: BTreeMap<u16, PortStats>,
    /// Events for ports beyond `max_ports`.
    pub ports_overflow: u64,
    pub lifetime: Hist,
    pub active_opens: u64,
    pub passive_opens: u64,
    pub closed: u64,
    pub retransmits: Retransmits,
    /// SYN-ACK retransmits by listening port (bounded by `max_ports`).
    pub synack_by_port: BTreeMap<u16, u64>,
    /// SYN retransmits by destination (bounded by `max_ports`): on the client side, the
    /// symptom of a remote listener that overflows or drops SYNs.
    pub syn_retransmits_by_destination: BTreeMap<SocketAddr, u64>,
    pub resets_sent: BTreeMap<&'static str, u64>,
    pub resets_received: BTreeMap<&'static str, u64>,
    pending: HashMap<(u64, SocketAddr, SocketAddr), PendingSyn>,
    /// SYN-ACK retransmits seen before the accepted socket, by 4-tuple.
    pending_synack: HashMap<(SocketAddr, SocketAddr), u32>,
    pub pending_evicted: u64,
    /// Aggregation mode: what the kernel counted (None when streaming).
    pub in_kernel: Option<crate::folded::KernelCounts>,
    /// Listening ports seen (CLOSE -> LISTEN, or a child of one).
    listen_ports: BTreeMap<u16, ()>,
    /// Bumped at every gap in the stream.
    epoch: u32,
}

/// Name under which resets "in no state" (no socket matched) are counted.
pub const NO_SOCKET: &str = "NO_SOCKET";

impl Aggregator {
    pub fn new(cfg: AggregatorConfig) -> Aggregator {
        Aggregator {
            table: Table::new(cfg.max_sockets),
            cfg,
            start_ns: None,
            end_ns: None,
            matched: 0,
            active: Hist::new(),
            active_by_syn_retransmits: BTreeMap::new(),
            active_by_remote_port: BTreeMap::new(),
            passive: Hist::new(),
            passive_by_synack_retransmits: BTreeMap::new(),
            dwell: Dwell::default(),
            by_port: BTreeMap::new(),
            ports_overflow: 0,
            lifetime: Hist::new(),
            active_opens: 0,
            passive_opens: 0,
            closed: 0,
            retransmits: Retransmits::default(),
            synack_by_port: BTreeMap::new(),
            syn_retransmits_by_destination: BTreeMap::new(),
            resets_sent: BTreeMap::new(),
            resets_received: BTreeMap::new(),
            pending: HashMap::default(),
            pending_synack: HashMap::default(),
            pending_evicted: 0,
            in_kernel: None,
            listen_ports: BTreeMap::new(),
            epoch: 0,
        }
    }

    pub fn config(&self) -> &AggregatorConfig {
        &self.cfg
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// A gap in the stream: see [`Table::gap`]. SYNs already waiting stay (the SYN queue is
    /// still what it is) but are not measured against: their accepted socket's events may be
    /// among the lost ones, and a 4-tuple reused meanwhile would pair with the wrong SYN.
    pub fn gap(&mut self) {
        self.table.gap();
        self.epoch = self.epoch.wrapping_add(1);
    }

    pub fn table_stats(&self) -> TableStats {
        self.table.stats()
    }

    /// Marks the start of observation (kernel clock). Figures per second use start..end.
    pub fn start(&mut self, ts_ns: u64) {
        self.start_ns = Some(ts_ns);
    }

    /// Marks the end of observation.
    pub fn finish(&mut self, ts_ns: u64) {
        self.end_ns = Some(ts_ns);
    }

    pub fn duration_ns(&self) -> u64 {
        match (self.start_ns, self.end_ns) {
            (Some(s), Some(e)) => e.saturating_sub(s),
            _ => 0,
        }
    }

    /// Applies one event; returns what the lifecycle table made of it and whether it passed the
    /// filter (only events that pass are measured).
    pub fn apply(&mut self, ev: &Event) -> (Outcome, bool) {
        let outcome = self.table.apply(ev);
        // Bookkeeping, like the lifecycle table, whatever the filters say: a SYN waits for its
        // accepted socket, which takes it out again; the handshake is measured only if the
        // accepted socket passes the filters.
        let syn = match ev.kind {
            EventKind::SynReceived { cookie, .. } => {
                self.pending_syn(cookie, ev);
                None
            }
            EventKind::PassiveEstablished { cookie } => {
                let synack = self
                    .pending_synack
                    .remove(&(ev.local, ev.remote))
                    .unwrap_or(0);
                self.pending
                    .remove(&(cookie, ev.local, ev.remote))
                    .map(|p| (p, synack))
            }
            _ => None,
        };
        let pass = self.cfg.filter.matches(ev, outcome.owner.map(|o| o.pid));
        if pass {
            self.matched += 1;
            self.measure(ev, &outcome, syn);
        }
        (outcome, pass)
    }

    /// The port a socket is accounted under in `by_port`: its local port if that is a listening
    /// port (it is an accepted socket), else none.
    fn service_port(&self, ev: &Event, life: Option<&Life>) -> Option<u16> {
        let port = ev.local.port();
        let passive =
            life.is_some_and(|l| matches!(l.first_state, TcpState::Listen | TcpState::SynRecv));
        (passive || self.listen_ports.contains_key(&port)).then_some(port)
    }

    pub(crate) fn port_stats_mut(&mut self, port: u16) -> Option<&mut PortStats> {
        self.port_stats(port)
    }

    /// The active-handshake histogram of a remote port, unless `max_ports` are broken out
    /// already (then counted in `ports_overflow`).
    pub(crate) fn remote_port_hist(&mut self, rport: u16) -> Option<&mut Hist> {
        if !self.active_by_remote_port.contains_key(&rport)
            && self.active_by_remote_port.len() >= self.cfg.max_ports
        {
            self.ports_overflow += 1;
            return None;
        }
        Some(self.active_by_remote_port.entry(rport).or_default())
    }

    fn port_stats(&mut self, port: u16) -> Option<&mut PortStats> {
        if !self.by_port.contains_key(&port) && self.by_port.len() >= self.cfg.max_ports {
            self.ports_overflow += 1;
            return None;
        }
        Some(self.by_port.entry(port).or_default())
    }

    fn measure(&mut self, ev: &Event, outcome: &Outcome, syn: Option<(PendingSyn, u32)>) {
        match ev.kind {
            EventKind::State { old, new } => self.transition(ev, outcome, old, new),
            EventKind::Retransmit { state } => {
                use TcpState::*;
                let r = &mut self.retransmits;
                r.total += 1;
                if state == Some(SynSent) {
                    let d = &mut self.syn_retransmits_by_destination;
                    if d.contains_key(&ev.remote) || d.len() < self.cfg.max_ports {
                        *d.entry(ev.remote).or_default() += 1;
                    } else {
                        self.ports_overflow += 1;
                    }
                }
                match state {
                    Some(SynSent) => r.syn += 1,
                    Some(SynRecv | NewSynRecv) => r.synack += 1,
                    Some(Established | CloseWait) => r.data += 1,
                    Some(FinWait1 | Closing | LastAck) => r.fin += 1,
                    _ => {}
                }
            }
            EventKind::RetransmitSynack { .. } => {
                self.retransmits.synack += 1;
                self.retransmits.total += 1;
                let port = ev.local.port();
                if self.synack_by_port.contains_key(&port)
                    || self.synack_by_port.len() < self.cfg.max_ports
                {
                    *self.synack_by_port.entry(port).or_default() += 1;
                }
                // Only for SYNs still waiting: a stray retransmit must not grow the map.
                if !self.pending.is_empty() {
                    *self
                        .pending_synack
                        .entry((ev.local, ev.remote))
                        .or_default() += 1;
                }
            }
            EventKind::ResetSent { state, .. } => {
                *self
                    .resets_sent
                    .entry(state.map_or(NO_SOCKET, TcpState::name))
                    .or_default() += 1;
            }
            EventKind::ResetReceived { state } => {
                *self
                    .resets_received
                    .entry(state.map_or(NO_SOCKET, TcpState::name))
                    .or_default() += 1;
            }
            EventKind::SynReceived {
                accept_queue,
                syn_queue,
                ..
            } => {
                let port = ev.local.port();
                if let Some(p) = self.port_stats(port) {
                    p.accept_queue_at_syn.record_us(u64::from(accept_queue));
                    p.syn_queue_at_syn.record_us(u64::from(syn_queue));
                }
            }
            EventKind::PassiveEstablished { .. } => {
                let Some((syn, synack)) = syn.filter(|(p, _)| p.epoch == self.epoch) else {
                    return;
                };
                let retrans = synack + syn.synack_retransmits;
                *self
                    .passive_by_synack_retransmits
                    .entry(retrans)
                    .or_default() += 1;
                let ns = ev.ts_ns.saturating_sub(syn.ts_ns);
                self.record_passive(ev.local.port(), ns);
            }
            EventKind::PassiveRtt {
                rtt_us,
                synack_retransmits,
            } => {
                *self
                    .passive_by_synack_retransmits
                    .entry(synack_retransmits)
                    .or_default() += 1;
                self.record_passive(ev.local.port(), u64::from(rtt_us) * 1_000);
            }
        }
    }

    fn pending_syn(&mut self, cookie: u64, ev: &Event) {
        if self.pending.len() >= self.cfg.max_pending_syns {
            // A SYN flood or a lost stream: drop the oldest waiting SYNs, counted.
            self.evict_pending();
        }
        self.pending.insert(
            (cookie, ev.local, ev.remote),
            PendingSyn {
                ts_ns: ev.ts_ns,
                synack_retransmits: 0,
                epoch: self.epoch,
                matched: self
                    .cfg
                    .filter
                    .matches_socket(ev.netns, &ev.local, &ev.remote),
            },
        );
    }

    fn record_passive(&mut self, port: u16, ns: u64) {
        self.passive.record_ns(ns);
        self.listen_ports.insert(port, ());
        if let Some(p) = self.port_stats(port) {
            p.handshake_passive.record_ns(ns);
        }
    }

    fn evict_pending(&mut self) {
        let mut ages: Vec<u64> = self.pending.values().map(|p| p.ts_ns).collect();
        let n = (self.cfg.max_pending_syns / 8).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        let (_, &mut cutoff, _) = ages.select_nth_unstable(n - 1);
        let before = self.pending.len();
        let mut budget = n;
        self.pending.retain(|_, p| {
            if budget > 0 && p.ts_ns <= cutoff {
                budget -= 1;
                false
            } else {
                true
            }
        });
        self.pending_evicted += (before - self.pending.len()) as u64;
        self.pending_synack.clear();
    }

    fn transition(&mut self, ev: &Event, outcome: &Outcome, old: TcpState, new: TcpState) {
        use TcpState::*;
        match (old, new) {
            (Close, SynSent) => self.active_opens += 1,
            (Listen, SynRecv) => {
                self.passive_opens += 1;
                self.listen_ports.insert(ev.local.port(), ());
            }
            (Close, Listen) => {
                self.listen_ports.insert(ev.local.port(), ());
            }
            _ => {}
        }
        let life = outcome.life.as_ref().or(outcome.ended.as_ref());
        // A listener's time in LISTEN is its lifetime, not a connection's dwell.
        if let Some(ns) = outcome.dwell_ns.filter(|_| old != Listen) {
            self.dwell.record(old, ns);
            if let Some(port) = self.service_port(ev, life)
                && let Some(p) = self.port_stats(port)
            {
                p.dwell.record(old, ns);
            }
            if (old, new) == (SynSent, Established) {
                self.active.record_ns(ns);
                let retrans = life.map_or(0, |l| l.retransmits);
                *self.active_by_syn_retransmits.entry(retrans).or_default() += 1;
                if let Some(h) = self.remote_port_hist(ev.remote.port()) {
                    h.record_ns(ns);
                }
            }
        }
        if new == Close && old != Listen {
            self.closed += 1;
            if let Some(ended) = &outcome.ended
                && ended.born_seen
                && !outcome.across_gap
            {
                self.lifetime
                    .record_ns(ev.ts_ns.saturating_sub(ended.first_ns));
            }
        }
    }

    /// Every histogram with its tag (as in the histogram log and `report`): `handshake.active`,
    /// `handshake.passive`, `dwell.<STATE>`, `lifetime`, `port.<P>.handshake_passive`,
    /// `port.<P>.dwell.<STATE>`.
    pub fn histograms(&self) -> Vec<(String, &Hist)> {
        let mut out = vec![
            ("handshake.active".to_string(), &self.active),
            ("handshake.passive".to_string(), &self.passive),
            ("lifetime".to_string(), &self.lifetime),
        ];
        for (state, h) in self.dwell.iter() {
            out.push((format!("dwell.{}", state.name()), h));
        }
        for (port, p) in &self.by_port {
            out.push((
                format!("port.{port}.handshake_passive"),
                &p.handshake_passive,
            ));
            for (state, h) in p.dwell.iter() {
                out.push((format!("port.{port}.dwell.{}", state.name()), h));
            }
        }
        out
    }

    /// Sockets currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    /// SYNs waiting for their accepted socket that pass the filters (the table itself holds
    /// every namespace's, as bookkeeping).
    pub fn pending_syns(&self) -> usize {
        self.pending.values().filter(|p| p.matched).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Comm;
    use TcpState::*;

    fn ev(ts: u64, sk: u64, kind: EventKind, local: &str, remote: &str) -> Event {
        Event {
            ts_ns: ts,
            skaddr: sk,
            pid: 10,
            tid: 10,
            comm: Comm::from_str_lossy("t"),
            netns: 1,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            kind,
            gap: false,
        }
    }

    fn st(ts: u64, sk: u64, old: TcpState, new: TcpState, local: &str, remote: &str) -> Event {
        ev(ts, sk, EventKind::State { old, new }, local, remote)
    }

    const MS: u64 = 1_000_000;

    /// A SYN's arrival, with empty listener queues.
    fn syn(cookie: u64) -> EventKind {
        EventKind::SynReceived {
            cookie,
            accept_queue: 0,
            syn_queue: 0,
        }
    }

    /// Within HdrHistogram's 3-significant-digit precision.
    fn assert_close(got: Option<u64>, want: u64) {
        let got = got.expect("a value");
        let err = (got as f64 - want as f64).abs() / want as f64;
        assert!(err < 0.001, "{got} is not within 0.1% of {want}");
    }

    /// A client connection: SYN retransmitted `retrans` times, handshake `hs` ns.
    fn client(a: &mut Aggregator, t0: u64, sk: u64, hs: u64, retrans: u32) {
        let (l, r) = ("10.0.0.1:40000", "10.0.0.2:80");
        a.apply(&st(t0, sk, Close, SynSent, "10.0.0.1:0", r));
        for i in 0..retrans {
            a.apply(&ev(
                t0 + (i as u64 + 1) * 1000 * MS,
                sk,
                EventKind::Retransmit {
                    state: Some(SynSent),
                },
                l,
                r,
            ));
        }
        a.apply(&st(t0 + hs, sk, SynSent, Established, l, r));
        a.apply(&st(t0 + hs + 10 * MS, sk, Established, FinWait1, l, r));
        a.apply(&st(t0 + hs + 11 * MS, sk, FinWait1, FinWait2, l, r));
        a.apply(&st(t0 + hs + 12 * MS, sk, FinWait2, Close, l, r));
    }

    #[test]
    fn active_handshakes_with_syn_retransmits() {
        let mut a = Aggregator::new(AggregatorConfig::default());
        client(&mut a, 0, 1, 2 * MS, 0);
        client(&mut a, 100 * MS, 2, 1003 * MS, 1);
        client(&mut a, 2000 * MS, 3, 3005 * MS, 2);
        let s = a.active.summary();
        assert_eq!(s.count, 3);
        assert_eq!(s.min_us, Some(2000));
        assert_close(s.p50_us, 1_003_000);
        assert_eq!(a.retransmits.syn, 3);
        assert_eq!(a.retransmits.total, 3);
        assert_eq!(
            a.syn_retransmits_by_destination,
            BTreeMap::from([("10.0.0.2:80".parse().unwrap(), 3)])
        );
        assert_eq!(
            a.active_by_syn_retransmits,
            BTreeMap::from([(0, 1), (1, 1), (2, 1)])
        );
        assert_eq!(a.active_by_remote_port[&80].count(), 3);
        assert_close(a.dwell.get(Established).unwrap().summary().max_us, 10_000);
        assert_eq!(a.dwell.get(FinWait2).unwrap().count(), 3);
        assert_eq!(a.lifetime.count(), 3);
        assert_eq!(a.active_opens, 3);
        assert_eq!(a.closed, 3);
        assert!(
            a.by_port.is_empty(),
            "client sockets are not a service port"
        );
        assert_eq!(a.tracked(), 0);
    }

    #[test]
    fn passive_handshake_from_sock_ops_pairs_by_tuple_and_netns() {
        let mut a = Aggregator::new(AggregatorConfig::default());
        let (l, r) = ("10.0.0.2:8080", "10.0.0.1:5555");
        a.apply(&ev(0, 0, syn(7), l, r));
        // Same tuple in another namespace: must not pair.
        a.apply(&ev(5 * MS, 0, syn(8), l, r));
        a.apply(&ev(
            1000 * MS,
            99,
            EventKind::RetransmitSynack { req: 1 },
            l,
            r,
        ));
        a.apply(&st(1200 * MS, 50, Listen, SynRecv, l, r));
        a.apply(&st(1200 * MS + 5, 50, SynRecv, Established, l, r));
        a.apply(&ev(
            1200 * MS + 6,
            50,
            EventKind::PassiveEstablished { cookie: 7 },
            l,
            r,
        ));
        assert_close(a.passive.summary().min_us, 1_200_000);
        assert_eq!(a.passive.count(), 1);
        assert_eq!(a.by_port[&8080].handshake_passive.count(), 1);
        assert_eq!(a.retransmits.synack, 1);
        assert_eq!(a.pending_syns(), 1, "the other namespace's SYN still waits");
        assert_eq!(a.passive_by_synack_retransmits, BTreeMap::from([(1, 1)]));
        // The child's later states are accounted under port 8080.
        a.apply(&st(1300 * MS, 50, Established, CloseWait, l, r));
        a.apply(&st(1400 * MS, 50, CloseWait, LastAck, l, r));
        a.apply(&st(1401 * MS, 50, LastAck, Close, l, r));
        let p = &a.by_port[&8080];
        assert_close(p.dwell.get(Established).unwrap().summary().max_us, 100_000);
        assert_eq!(p.dwell.get(CloseWait).unwrap().count(), 1);
        assert_eq!(a.passive_opens, 1);
        assert_eq!(a.lifetime.count(), 1);
    }

    #[test]
    fn srtt_fallback_records_the_rtt() {
        let mut a = Aggregator::new(AggregatorConfig {
            passive_method: PassiveMethod::Srtt,
            ..Default::default()
        });
        for (rtt_us, synack_retransmits) in [(250, 0), (1_003_000, 1)] {
            a.apply(&ev(
                0,
                5,
                EventKind::PassiveRtt {
                    rtt_us,
                    synack_retransmits,
                },
                "1.1.1.1:443",
                "2.2.2.2:9",
            ));
        }
        assert_eq!(a.passive.summary().min_us, Some(250));
        assert!(a.passive.summary().max_us >= Some(1_000_000));
        assert_eq!(a.by_port[&443].handshake_passive.count(), 2);
        assert_eq!(
            a.passive_by_synack_retransmits,
            BTreeMap::from([(0, 1), (1, 1)])
        );
    }

    #[test]
    fn retransmits_and_resets_by_state() {
        let mut a = Aggregator::new(AggregatorConfig::default());
        let (l, r) = ("1.1.1.1:1", "2.2.2.2:2");
        for s in [Established, CloseWait, FinWait1, LastAck, Closing] {
            a.apply(&ev(0, 1, EventKind::Retransmit { state: Some(s) }, l, r));
        }
        a.apply(&ev(
            0,
            0,
            EventKind::ResetSent {
                state: None,
                reason: 1,
            },
            l,
            r,
        ));
        a.apply(&ev(
            0,
            1,
            EventKind::ResetReceived {
                state: Some(SynSent),
            },
            l,
            r,
        ));
        a.apply(&ev(
            0,
            1,
            EventKind::ResetSent {
                state: Some(Established),
                reason: 0,
            },
            l,
            r,
        ));
        assert_eq!(
            a.retransmits,
            Retransmits {
                syn: 0,
                synack: 0,
                data: 2,
                fin: 3,
                total: 5
            }
        );
        assert_eq!(a.resets_sent[NO_SOCKET], 1);
        assert_eq!(a.resets_sent["ESTABLISHED"], 1);
        assert_eq!(a.resets_received["SYN_SENT"], 1);
    }

    #[test]
    fn filter_excludes_before_measuring_but_table_still_learns() {
        let mut a = Aggregator::new(AggregatorConfig {
            filter: Filter {
                ports: vec![443],
                ..Default::default()
            },
            ..Default::default()
        });
        client(&mut a, 0, 1, 2 * MS, 0);
        assert_eq!(a.active.count(), 0);
        assert_eq!(a.matched, 0);
        assert_eq!(a.table_stats().mismatched, 0);
    }

    #[test]
    fn filtered_out_handshakes_leave_nothing_pending() {
        let mut a = Aggregator::new(AggregatorConfig {
            filter: Filter {
                netns: Some(2),
                ..Default::default()
            },
            ..Default::default()
        });
        let (l, r) = ("10.0.0.2:8080", "10.0.0.1:5555");
        a.apply(&ev(0, 0, syn(7), l, r));
        a.apply(&ev(
            5,
            50,
            EventKind::PassiveEstablished { cookie: 7 },
            l,
            r,
        ));
        assert_eq!(a.pending_syns(), 0);
        assert_eq!(a.passive.count(), 0, "filtered out: not measured");
    }

    #[test]
    fn no_passive_handshake_across_a_gap() {
        let mut a = Aggregator::new(AggregatorConfig::default());
        let (l, r) = ("10.0.0.2:8080", "10.0.0.1:5555");
        let syn = syn(7);
        a.apply(&ev(0, 0, syn, l, r));
        a.gap();
        assert_eq!(a.pending_syns(), 1, "the SYN queue is still what it is");
        a.apply(&ev(
            9 * MS,
            50,
            EventKind::PassiveEstablished { cookie: 7 },
            l,
            r,
        ));
        assert_eq!(a.passive.count(), 0, "not measured across the gap");
        assert_eq!(a.pending_syns(), 0);
        a.apply(&ev(10 * MS, 0, syn, l, r));
        a.apply(&ev(
            12 * MS,
            51,
            EventKind::PassiveEstablished { cookie: 7 },
            l,
            r,
        ));
        assert_eq!(a.passive.count(), 1, "measured again after it");
    }

    #[test]
    fn pending_syns_are_bounded() {
        let mut a = Aggregator::new(AggregatorConfig {
            max_pending_syns: 16,
            ..Default::default()
        });
        for i in 0..40u16 {
            let r = format!("9.9.9.9:{}", 1000 + i);
            a.apply(&ev(
                u64::from(i),
                0,
                EventKind::SynReceived {
                    cookie: 1,
                    accept_queue: 3,
                    syn_queue: 1,
                },
                "1.1.1.1:80",
                &r,
            ));
        }
        assert!(a.pending_syns() <= 16);
        assert_eq!(a.pending_evicted as usize + a.pending_syns(), 40);
    }

    #[test]
    fn ports_are_bounded() {
        let mut a = Aggregator::new(AggregatorConfig {
            max_ports: 2,
            ..Default::default()
        });
        for port in [80u16, 81, 82] {
            let l = format!("1.1.1.1:{port}");
            a.apply(&ev(
                0,
                0,
                EventKind::PassiveRtt {
                    rtt_us: 5,
                    synack_retransmits: 0,
                },
                &l,
                "2.2.2.2:9",
            ));
        }
        assert_eq!(a.by_port.len(), 2);
        assert_eq!(a.ports_overflow, 1);
        assert_eq!(a.passive.count(), 3);
    }
}
