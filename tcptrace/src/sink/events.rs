//! `tcptrace events`: one line per event, as text or JSON lines (field names in the README).
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    diagnose::Leak,
    event::{Event, EventKind, TcpState, rst_reason_name},
    lifecycle::Outcome,
    sink::WallClock,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

pub struct EventsSink<W: Write> {
    out: W,
    format: Format,
    clock: WallClock,
    header_done: bool,
}

/// One JSON line. Field names are a stable interface: add, never rename.
#[derive(Serialize)]
struct JsonEvent<'a> {
    time: &'a str,
    ts_ns: u64,
    kind: &'static str,
    skaddr: String,
    pid: u32,
    tid: u32,
    comm: &'a str,
    netns: u32,
    family: &'static str,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    old_state: Option<&'static str>,
    new_state: Option<&'static str>,
    state: Option<&'static str>,
    dwell_ms: Option<f64>,
    reason: Option<String>,
    owner_pid: Option<u32>,
    owner_comm: Option<String>,
    /// `leak` events: time in CLOSE_WAIT, whether that is a lower bound, unread bytes.
    age_s: Option<f64>,
    age_is_lower_bound: Option<bool>,
    recv_q: Option<u32>,
}

fn state_name(s: Option<TcpState>) -> Option<&'static str> {
    s.map(TcpState::name)
}

fn reason_text(reason: u32) -> String {
    rst_reason_name(reason).map_or_else(|| reason.to_string(), str::to_string)
}

/// The EVENT column of the text format.
fn describe(kind: &EventKind) -> String {
    let state = |s: Option<TcpState>| s.map_or("?", TcpState::name);
    match *kind {
        EventKind::State { old, new } => format!("{old} -> {new}"),
        EventKind::Retransmit { state: s } => format!("RETRANSMIT in {}", state(s)),
        EventKind::RetransmitSynack { .. } => "SYNACK RETRANSMIT".to_string(),
        EventKind::ResetSent { state: s, reason } => {
            format!("RST sent in {} ({})", state(s), reason_text(reason))
        }
        EventKind::ResetReceived { state: s } => format!("RST received in {}", state(s)),
        EventKind::SynReceived { .. } => "SYN received (request socket)".to_string(),
        EventKind::PassiveEstablished { .. } => "accepted connection ESTABLISHED".to_string(),
        EventKind::PassiveRtt { rtt_us } => format!("SYN-ACK RTT {rtt_us}µs"),
    }
}

impl<W: Write> EventsSink<W> {
    pub fn new(out: W, format: Format, clock: WallClock) -> Self {
        EventsSink {
            out,
            format,
            clock,
            header_done: false,
        }
    }

    pub fn write(&mut self, ev: &Event, outcome: &Outcome) -> io::Result<()> {
        match self.format {
            Format::Json => self.write_json(ev, outcome),
            Format::Text => self.write_text(ev, outcome),
        }
    }

    /// A socket that has just been in CLOSE_WAIT longer than the threshold.
    pub fn write_leak(&mut self, ts_ns: u64, l: &Leak) -> io::Result<()> {
        let time = self.clock.rfc3339(ts_ns);
        match self.format {
            Format::Json => {
                let line = JsonEvent {
                    time: &time,
                    ts_ns,
                    kind: "leak",
                    skaddr: "0x0".into(),
                    pid: l.pid.unwrap_or(0),
                    tid: 0,
                    comm: l.comm.as_deref().unwrap_or(""),
                    netns: l.netns,
                    family: if l.laddr.contains(':') {
                        "ipv6"
                    } else {
                        "ipv4"
                    },
                    laddr: l.laddr.clone(),
                    lport: l.lport,
                    raddr: l.raddr.clone(),
                    rport: l.rport,
                    old_state: None,
                    new_state: None,
                    state: Some("CLOSE_WAIT"),
                    dwell_ms: None,
                    reason: None,
                    owner_pid: l.pid,
                    owner_comm: l.comm.clone(),
                    age_s: Some(l.age_s),
                    age_is_lower_bound: Some(l.age_is_lower_bound),
                    recv_q: Some(l.recv_q),
                };
                serde_json::to_writer(&mut self.out, &line)?;
                self.out.write_all(b"\n")
            }
            Format::Text => {
                let hms = time.get(11..26).unwrap_or(&time).to_string();
                writeln!(
                    self.out,
                    "{:<15} {:<16} {:>7} {:<15} {:<28} {:<28} {:>10}  LEAK: CLOSE_WAIT for {}{:.1}s, {} bytes unread",
                    hms,
                    "-",
                    l.pid.map_or("?".into(), |p| p.to_string()),
                    l.comm.as_deref().unwrap_or("?"),
                    format!("{}:{}", l.laddr, l.lport),
                    format!("{}:{}", l.raddr, l.rport),
                    "",
                    if l.age_is_lower_bound { ">= " } else { "" },
                    l.age_s,
                    l.recv_q
                )
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn write_text(&mut self, ev: &Event, outcome: &Outcome) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(
                self.out,
                "{:<15} {:<16} {:>7} {:<15} {:<28} {:<28} {:>10}  EVENT",
                "TIME(UTC)", "SKADDR", "PID", "COMM", "LOCAL", "REMOTE", "MS"
            )?;
        }
        let time = self.clock.rfc3339(ev.ts_ns);
        // HH:MM:SS.micro out of the RFC 3339 text.
        let hms = time.get(11..26).unwrap_or(&time);
        let ms = match outcome.dwell_ns {
            Some(ns) => format!("{:.3}", ns as f64 / 1e6),
            None => String::new(),
        };
        writeln!(
            self.out,
            "{:<15} {:<16x} {:>7} {:<15} {:<28} {:<28} {:>10}  {}",
            hms,
            ev.skaddr,
            ev.pid,
            ev.comm.as_str(),
            ev.local.to_string(),
            ev.remote.to_string(),
            ms,
            describe(&ev.kind)
        )
    }

    fn write_json(&mut self, ev: &Event, outcome: &Outcome) -> io::Result<()> {
        let (old_state, new_state, state, reason) = match ev.kind {
            EventKind::State { old, new } => (Some(old.name()), Some(new.name()), None, None),
            EventKind::Retransmit { state } | EventKind::ResetReceived { state } => {
                (None, None, state_name(state), None)
            }
            EventKind::RetransmitSynack { .. } => {
                (None, None, Some(TcpState::NewSynRecv.name()), None)
            }
            EventKind::ResetSent { state, reason } => {
                (None, None, state_name(state), Some(reason_text(reason)))
            }
            EventKind::SynReceived { .. } => (None, None, Some("NEW_SYN_RECV"), None),
            EventKind::PassiveEstablished { .. } | EventKind::PassiveRtt { .. } => {
                (None, None, Some("SYN_RECV"), None)
            }
        };
        let time = self.clock.rfc3339(ev.ts_ns);
        let comm = ev.comm.as_str();
        let line = JsonEvent {
            time: &time,
            ts_ns: ev.ts_ns,
            kind: ev.kind.name(),
            skaddr: format!("0x{:x}", ev.skaddr),
            pid: ev.pid,
            tid: ev.tid,
            comm: &comm,
            netns: ev.netns,
            family: if ev.is_ipv6() { "ipv6" } else { "ipv4" },
            laddr: ev.local.ip().to_string(),
            lport: ev.local.port(),
            raddr: ev.remote.ip().to_string(),
            rport: ev.remote.port(),
            old_state,
            new_state,
            state,
            dwell_ms: outcome.dwell_ns.map(|ns| ns as f64 / 1e6),
            reason,
            owner_pid: outcome.owner.map(|o| o.pid),
            owner_comm: outcome.owner.map(|o| o.comm.as_str().into_owned()),
            age_s: None,
            age_is_lower_bound: None,
            recv_q: None,
        };
        serde_json::to_writer(&mut self.out, &line)?;
        self.out.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Comm, lifecycle::Owner};

    fn ev(kind: EventKind) -> Event {
        Event {
            ts_ns: 2_000_000,
            skaddr: 0xffff_0000_0000_00a0,
            pid: 7,
            tid: 8,
            comm: Comm::from_str_lossy("nc"),
            netns: 4026531840,
            local: "127.0.0.1:4000".parse().unwrap(),
            remote: "127.0.0.1:80".parse().unwrap(),
            kind,
            gap: false,
        }
    }

    fn render(format: Format, e: &Event, o: &Outcome) -> String {
        let mut s = EventsSink::new(Vec::new(), format, WallClock::with_offset(0));
        s.write(e, o).unwrap();
        String::from_utf8(s.out).unwrap()
    }

    #[test]
    fn json_fields_are_stable() {
        let e = ev(EventKind::State {
            old: TcpState::SynSent,
            new: TcpState::Established,
        });
        let o = Outcome {
            dwell_ns: Some(1_500_000),
            owner: Some(Owner {
                pid: 7,
                comm: Comm::from_str_lossy("nc"),
            }),
            ..Outcome::default()
        };
        let v: serde_json::Value = serde_json::from_str(&render(Format::Json, &e, &o)).unwrap();
        assert_eq!(v["kind"], "state");
        assert_eq!(v["old_state"], "SYN_SENT");
        assert_eq!(v["new_state"], "ESTABLISHED");
        assert_eq!(v["state"], serde_json::Value::Null);
        assert_eq!(v["dwell_ms"], 1.5);
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["lport"], 4000);
        assert_eq!(v["rport"], 80);
        assert_eq!(v["skaddr"], "0xffff0000000000a0");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["netns"], 4026531840u32);
        assert_eq!(v["owner_pid"], 7);
        assert_eq!(v["time"], "1970-01-01T00:00:00.002000Z");
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        for k in [
            "time",
            "ts_ns",
            "kind",
            "skaddr",
            "pid",
            "tid",
            "comm",
            "netns",
            "family",
            "laddr",
            "lport",
            "raddr",
            "rport",
            "old_state",
            "new_state",
            "state",
            "dwell_ms",
            "reason",
            "owner_pid",
            "owner_comm",
            "age_s",
            "age_is_lower_bound",
            "recv_q",
        ] {
            assert!(keys.contains(&k.to_string()), "missing {k}");
        }
    }

    #[test]
    fn resets_and_retransmits_name_their_state() {
        let e = ev(EventKind::ResetSent {
            state: None,
            reason: 1,
        });
        let v: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &e, &Outcome::default())).unwrap();
        assert_eq!(v["kind"], "reset_sent");
        assert_eq!(v["state"], serde_json::Value::Null);
        assert_eq!(v["reason"], "NO_SOCKET");
        let t = render(
            Format::Text,
            &ev(EventKind::Retransmit {
                state: Some(TcpState::SynSent),
            }),
            &Outcome::default(),
        );
        assert!(t.contains("RETRANSMIT in SYN_SENT"), "{t}");
        assert!(t.starts_with("TIME(UTC)"), "header first: {t}");
    }
}
