//! `tcptrace events`: one line per event, as text or JSON lines (field names in the README).
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    diagnose::Leak,
    event::{Comm, Event, EventKind, TcpState, rst_reason_name},
    lifecycle::Outcome,
    sink::{Rfc3339Cache, WallClock},
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
    /// Lines not handed to `out` yet, written in place and handed over [`SPILL`] bytes at a
    /// time: a line built apart and then copied into a `BufWriter` cost a copy per event.
    buf: Vec<u8>,
    times: Rfc3339Cache,
}

/// Bytes of lines `EventsSink` gathers before writing them out (more than `out`'s own buffer,
/// so a `BufWriter` passes them straight through).
const SPILL: usize = 1 << 16;

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

/// Lower-case hex without leading zeros, as `{:x}` prints it.
fn hex(b: &mut Vec<u8>, v: u64) {
    let digits = ((64 - v.leading_zeros()).div_ceil(4).max(1)) as usize;
    let mut buf = [0u8; 16];
    for (i, d) in buf[16 - digits..].iter_mut().rev().enumerate() {
        *d = b"0123456789abcdef"[((v >> (i * 4)) & 0xf) as usize];
    }
    b.extend_from_slice(&buf[16 - digits..]);
}

/// The text format's column headings (the widths every line keeps).
const TEXT_HEADER: &str = "TIME(UTC)       SKADDR               PID COMM            LOCAL                        REMOTE                               MS  EVENT\n";

/// Spaces after the text written since `start`, up to `width` bytes in all.
fn pad(b: &mut Vec<u8>, start: usize, width: usize) {
    let target = start + width;
    if b.len() < target {
        b.resize(target, b' ');
    }
}

/// `s` right-aligned in `width` bytes.
fn right(b: &mut Vec<u8>, s: &[u8], width: usize) {
    b.resize(b.len() + width.saturating_sub(s.len()), b' ');
    b.extend_from_slice(s);
}

/// An address and port as `SocketAddr`'s `Display` prints them.
fn socket_addr(b: &mut Vec<u8>, a: std::net::SocketAddr) {
    match a {
        std::net::SocketAddr::V6(v6) if v6.scope_id() != 0 => {
            let _ = write!(b, "{a}");
            return;
        }
        std::net::SocketAddr::V6(v6) => {
            b.push(b'[');
            ip(b, std::net::IpAddr::V6(*v6.ip()));
            b.push(b']');
        }
        std::net::SocketAddr::V4(v4) => ip(b, std::net::IpAddr::V4(*v4.ip())),
    }
    b.push(b':');
    b.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
}

/// Nanoseconds as milliseconds with three decimals, as `format!("{:.3}", ns as f64 / 1e6)`
/// prints them; returns the length written to `out`. Integer arithmetic, except for exact
/// ties (how the float rounds those depends on its binary value) and huge values.
fn millis(out: &mut [u8; 32], ns: u64) -> usize {
    let mut w = &mut out[..];
    if ns % 1000 == 500 || ns >= 1_000_000_000_000_000 {
        let _ = write!(w, "{:.3}", ns as f64 / 1e6);
    } else {
        let us = (ns + 500) / 1000;
        let _ = write!(w, "{}.{:03}", us / 1000, us % 1000);
    }
    32 - w.len()
}

/// Nanoseconds as a JSON number of milliseconds, in integer arithmetic: the exact decimal
/// (at most six decimals, at least one), which a reader parses to the same double as
/// `ns as f64 / 1e6` (both are the double nearest the exact quotient, while `ns` is exact in a
/// double: below 2^53, 104 days); serde's shortest float form cost more than any other field.
fn json_millis(b: &mut Vec<u8>, ns: u64) {
    if ns >= 1 << 53 {
        let _ = serde_json::to_writer(b, &(ns as f64 / 1e6));
        return;
    }
    b.extend_from_slice(itoa::Buffer::new().format(ns / 1_000_000).as_bytes());
    b.push(b'.');
    let mut digits = [b'0'; 6];
    let mut f = ns % 1_000_000;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (f % 10) as u8;
        f /= 10;
    }
    let len = digits.iter().rposition(|&d| d != b'0').map_or(1, |i| i + 1);
    b.extend_from_slice(&digits[..len]);
}

/// A number below 1000 in decimal, no leading zeros.
fn small_decimal(b: &mut Vec<u8>, n: u8) {
    if n >= 100 {
        b.push(b'0' + n / 100);
    }
    if n >= 10 {
        b.push(b'0' + n / 10 % 10);
    }
    b.push(b'0' + n % 10);
}

/// An address as `Display` prints it (IPv4 by hand: it is most of them).
fn ip(b: &mut Vec<u8>, a: std::net::IpAddr) {
    match a {
        std::net::IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    b.push(b'.');
                }
                small_decimal(b, o);
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(b, "{v6}");
        }
    }
}

/// A JSON string, escaped. (Serializing a string into memory cannot fail.)
fn json_str(b: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(b, s);
}

/// A process name as a JSON string.
fn json_comm(b: &mut Vec<u8>, c: &Comm) {
    match c.as_plain_json() {
        Some(s) => {
            b.push(b'"');
            b.extend_from_slice(s);
            b.push(b'"');
        }
        None => json_str(b, &c.as_str()),
    }
}

/// A string known to need no escaping (state names), or null.
fn opt_plain_str(b: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            b.push(b'"');
            b.extend_from_slice(s.as_bytes());
            b.push(b'"');
        }
        None => b.extend_from_slice(b"null"),
    }
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
        EventKind::PassiveRtt {
            rtt_us,
            synack_retransmits: 0,
        } => format!("SYN-ACK RTT {rtt_us}µs"),
        EventKind::PassiveRtt {
            rtt_us,
            synack_retransmits,
        } => format!(
            "handshake {rtt_us}µs since the first SYN-ACK ({synack_retransmits} retransmitted)"
        ),
    }
}

impl<W: Write> EventsSink<W> {
    pub fn new(out: W, format: Format, clock: WallClock) -> Self {
        EventsSink {
            out,
            format,
            clock,
            header_done: false,
            buf: Vec::with_capacity(SPILL + 1024),
            times: Rfc3339Cache::default(),
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
        self.spill()?;
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
        self.spill()?;
        self.out.flush()
    }

    /// Hands the gathered lines to `out`.
    fn spill(&mut self) -> io::Result<()> {
        let r = self.out.write_all(&self.buf);
        self.buf.clear();
        r
    }

    /// Keeps `b` as the gathered lines, handing them over once there are enough.
    fn keep(&mut self, b: Vec<u8>) -> io::Result<()> {
        self.buf = b;
        if self.buf.len() >= SPILL {
            self.spill()?;
        }
        Ok(())
    }

    /// One text line, written by hand into the reused buffer like the JSON ones: through
    /// `format!` (an allocation per column) the default `events` output could not keep up with
    /// a busy host's churn and lost events. Columns as [`TEXT_HEADER`] lays them out.
    fn write_text(&mut self, ev: &Event, outcome: &Outcome) -> io::Result<()> {
        let mut b = std::mem::take(&mut self.buf);
        if !self.header_done {
            self.header_done = true;
            b.extend_from_slice(TEXT_HEADER.as_bytes());
        }
        let start = b.len();
        // HH:MM:SS.micro out of the RFC 3339 text.
        self.times.write(&self.clock, ev.ts_ns, &mut b);
        b.drain(start..(start + 11).min(b.len()));
        b.truncate(start + 15);
        pad(&mut b, start, 15);
        b.push(b' ');
        let col = b.len();
        hex(&mut b, ev.skaddr);
        pad(&mut b, col, 16);
        b.push(b' ');
        let mut n = itoa::Buffer::new();
        right(&mut b, n.format(ev.pid).as_bytes(), 7);
        b.push(b' ');
        let col = b.len();
        match ev.comm.as_plain_json() {
            Some(c) => b.extend_from_slice(c),
            // (Padding counts characters, as `format!` does.)
            None => {
                let _ = write!(b, "{:<15}", ev.comm.as_str());
            }
        }
        pad(&mut b, col, 15);
        b.push(b' ');
        for a in [ev.local, ev.remote] {
            let col = b.len();
            socket_addr(&mut b, a);
            pad(&mut b, col, 28);
            b.push(b' ');
        }
        match outcome.dwell_ns {
            Some(ns) => {
                let mut ms = [0u8; 32];
                let len = millis(&mut ms, ns);
                right(&mut b, &ms[..len], 10);
            }
            None => b.extend_from_slice(&[b' '; 10]),
        }
        b.extend_from_slice(b"  ");
        match ev.kind {
            EventKind::State { old, new } => {
                b.extend_from_slice(old.name().as_bytes());
                b.extend_from_slice(b" -> ");
                b.extend_from_slice(new.name().as_bytes());
            }
            _ => b.extend_from_slice(describe(&ev.kind).as_bytes()),
        }
        b.push(b'\n');
        self.keep(b)
    }

    /// The hot path of `events --json`: written by hand into one reused buffer (serde's
    /// generic string escaping and per-field allocations cost ten times more). Same keys, same
    /// order and same text as [`JsonEvent`], which the leak lines still use; only `comm` and
    /// `owner_comm` can hold characters that need escaping.
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
        let mut b = std::mem::take(&mut self.buf);
        let mut n = itoa::Buffer::new();
        b.extend_from_slice(b"{\"time\":\"");
        self.times.write(&self.clock, ev.ts_ns, &mut b);
        b.extend_from_slice(b"\",\"ts_ns\":");
        b.extend_from_slice(n.format(ev.ts_ns).as_bytes());
        b.extend_from_slice(b",\"kind\":\"");
        b.extend_from_slice(ev.kind.name().as_bytes());
        b.extend_from_slice(b"\",\"skaddr\":\"0x");
        hex(&mut b, ev.skaddr);
        b.extend_from_slice(b"\",\"pid\":");
        b.extend_from_slice(n.format(ev.pid).as_bytes());
        b.extend_from_slice(b",\"tid\":");
        b.extend_from_slice(n.format(ev.tid).as_bytes());
        b.extend_from_slice(b",\"comm\":");
        json_comm(&mut b, &ev.comm);
        b.extend_from_slice(b",\"netns\":");
        b.extend_from_slice(n.format(ev.netns).as_bytes());
        b.extend_from_slice(if ev.is_ipv6() {
            b",\"family\":\"ipv6\",\"laddr\":\""
        } else {
            b",\"family\":\"ipv4\",\"laddr\":\""
        });
        ip(&mut b, ev.local.ip());
        b.extend_from_slice(b"\",\"lport\":");
        b.extend_from_slice(n.format(ev.local.port()).as_bytes());
        b.extend_from_slice(b",\"raddr\":\"");
        ip(&mut b, ev.remote.ip());
        b.extend_from_slice(b"\",\"rport\":");
        b.extend_from_slice(n.format(ev.remote.port()).as_bytes());
        for (key, v) in [
            (&b",\"old_state\":"[..], old_state),
            (b",\"new_state\":", new_state),
            (b",\"state\":", state),
        ] {
            b.extend_from_slice(key);
            opt_plain_str(&mut b, v);
        }
        b.extend_from_slice(b",\"dwell_ms\":");
        match outcome.dwell_ns {
            Some(ns) => json_millis(&mut b, ns),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"reason\":");
        match &reason {
            Some(r) => json_str(&mut b, r),
            None => b.extend_from_slice(b"null"),
        }
        b.extend_from_slice(b",\"owner_pid\":");
        match outcome.owner {
            Some(o) => {
                b.extend_from_slice(n.format(o.pid).as_bytes());
                b.extend_from_slice(b",\"owner_comm\":");
                json_comm(&mut b, &o.comm);
            }
            None => b.extend_from_slice(b"null,\"owner_comm\":null"),
        }
        b.extend_from_slice(b",\"age_s\":null,\"age_is_lower_bound\":null,\"recv_q\":null}\n");
        self.keep(b)
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
        s.flush().unwrap();
        String::from_utf8(s.out).unwrap()
    }

    #[test]
    fn gathered_lines_come_out_whole_and_in_order() {
        // Enough lines to be handed over several times, a leak line among them (written
        // straight to the output), then the rest at the flush.
        for format in [Format::Json, Format::Text] {
            let mut s = EventsSink::new(Vec::new(), format, WallClock::with_offset(0));
            let one = |i: u64, s: &mut EventsSink<Vec<u8>>| {
                let mut e = ev(EventKind::State {
                    old: TcpState::Established,
                    new: TcpState::CloseWait,
                });
                e.ts_ns = i;
                s.write(&e, &Outcome::default()).unwrap();
            };
            for i in 0..1000 {
                one(i, &mut s);
            }
            // Some handed over already, some still gathered.
            assert!(!s.out.is_empty() && !s.buf.is_empty());
            let leak = Leak {
                pid: Some(9),
                comm: Some("app".into()),
                cgroup: None,
                netns: 1,
                laddr: "127.0.0.1".into(),
                lport: 80,
                raddr: "127.0.0.1".into(),
                rport: 4000,
                age_s: 61.0,
                age_is_lower_bound: false,
                recv_q: 0,
                inode: 0,
            };
            s.write_leak(0, &leak).unwrap();
            for i in 1000..1200 {
                one(i, &mut s);
            }
            s.flush().unwrap();
            let text = String::from_utf8(s.out).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let header = usize::from(format == Format::Text);
            assert_eq!(lines.len(), header + 1201);
            let leak_at = lines
                .iter()
                .position(|l| l.contains("LEAK") || l.contains("\"leak\""));
            assert_eq!(leak_at, Some(header + 1000), "{format:?}");
            if format == Format::Json {
                for (i, l) in lines.iter().filter(|l| !l.contains("leak")).enumerate() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    assert_eq!(v["ts_ns"], i as u64);
                }
            }
        }
    }

    #[test]
    fn json_millis_parse_to_the_float_division() {
        let mut values = vec![0u64, 1, 9, 10, 999_999, 1_000_000, 1_000_001, 1_500_000];
        values.extend([123_456_789, 60_000_000_000, (1 << 53) - 1, u64::MAX]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            // xorshift: values of every magnitude.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for ns in values {
            let mut b = Vec::new();
            json_millis(&mut b, ns);
            let text = std::str::from_utf8(&b).unwrap();
            // (str::parse rounds correctly; serde_json without float_roundtrip may not.)
            let parsed: f64 = text.parse().unwrap();
            assert_eq!(parsed, ns as f64 / 1e6, "{ns} -> {text}");
            if ns < 1 << 53 {
                assert!(!text.ends_with('0') || text.ends_with(".0"), "{text}");
            }
        }
        let mut b = Vec::new();
        json_millis(&mut b, 1_250_000);
        assert_eq!(b, b"1.25");
    }

    #[test]
    fn hand_written_hex_and_addresses_match_display() {
        for v in [0u64, 1, 0xf, 0x10, 0xffff_8881_00d7_e5c0, u64::MAX] {
            let mut b = Vec::new();
            hex(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), format!("{v:x}"));
        }
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "255.10.0.9",
            "::1",
            "fe80::1:2",
            "::ffff:10.0.0.1",
        ] {
            let a: std::net::IpAddr = a.parse().unwrap();
            let mut b = Vec::new();
            ip(&mut b, a);
            assert_eq!(String::from_utf8(b).unwrap(), a.to_string());
        }
        for o in 0..=255u8 {
            let a = std::net::IpAddr::from([o, 255 - o, o / 3, 100]);
            let mut b = Vec::new();
            ip(&mut b, a);
            assert_eq!(String::from_utf8(b).unwrap(), a.to_string());
        }
        // Process names: the unescaped fast path and the escaping one write what serde does.
        for name in [
            &b"curl"[..],
            b"kworker/u8:2",
            b"a\"quote",
            b"back\\slash",
            b"tab\there",
            b"caf\xc3\xa9",
            b"bad\xff",
            b"",
            b"exactly15chars_",
        ] {
            let c = Comm::from_bytes(name);
            let mut b = Vec::new();
            json_comm(&mut b, &c);
            let want = serde_json::to_string(&c.as_str()).unwrap();
            assert_eq!(String::from_utf8(b).unwrap(), want, "{name:?}");
        }
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

    /// The text line as `format!` lays it out: what the hand-written path must match.
    fn reference_text(e: &Event, o: &Outcome) -> String {
        let time = WallClock::with_offset(0).rfc3339(e.ts_ns);
        let ms = o
            .dwell_ns
            .map_or(String::new(), |ns| format!("{:.3}", ns as f64 / 1e6));
        format!(
            "{:<15} {:<16x} {:>7} {:<15} {:<28} {:<28} {:>10}  {}\n",
            &time[11..26],
            e.skaddr,
            e.pid,
            e.comm.as_str(),
            e.local.to_string(),
            e.remote.to_string(),
            ms,
            describe(&e.kind)
        )
    }

    #[test]
    fn text_lines_are_laid_out_as_format_would() {
        let header = format!(
            "{:<15} {:<16} {:>7} {:<15} {:<28} {:<28} {:>10}  EVENT\n",
            "TIME(UTC)", "SKADDR", "PID", "COMM", "LOCAL", "REMOTE", "MS"
        );
        assert_eq!(TEXT_HEADER, header);
        let kinds = [
            EventKind::State {
                old: TcpState::SynSent,
                new: TcpState::Established,
            },
            EventKind::Retransmit { state: None },
            EventKind::ResetSent {
                state: Some(TcpState::Established),
                reason: 1,
            },
            EventKind::PassiveRtt {
                rtt_us: 17,
                synack_retransmits: 0,
            },
            EventKind::PassiveRtt {
                rtt_us: 1_003_000,
                synack_retransmits: 1,
            },
        ];
        let addrs = [
            ("127.0.0.1:4000", "10.200.0.255:80"),
            (
                "[::1]:4000",
                "[2001:db8:1234:5678:9abc:def0:1234:5678]:65535",
            ),
            ("[fe80::1%3]:1", "[::ffff:10.0.0.1]:0"),
        ];
        let comms = [
            &b"curl"[..],
            b"exactly15chars_",
            b"caf\xc3\xa9 \xe2\x98\x95",
            b"",
        ];
        let dwells = [
            None,
            Some(0),
            Some(499),
            Some(1500),
            Some(4500),
            Some(123_456_789),
            Some(2_000_000_000_000_000),
        ];
        let mut n = 0u64;
        for kind in kinds {
            for (l, r) in addrs {
                for comm in comms {
                    for dwell_ns in dwells {
                        n += 1;
                        let mut e = ev(kind);
                        e.ts_ns = n * 1_234_567_891;
                        e.skaddr = n.wrapping_mul(0xffff_8881_00d7_e5c0);
                        e.pid = (n * 7919) as u32;
                        e.comm = Comm::from_bytes(comm);
                        e.local = l.parse().unwrap();
                        e.remote = r.parse().unwrap();
                        let o = Outcome {
                            dwell_ns,
                            ..Outcome::default()
                        };
                        let got = render(Format::Text, &e, &o);
                        let want = reference_text(&e, &o);
                        assert_eq!(got.strip_prefix(&header), Some(want.as_str()));
                    }
                }
            }
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
