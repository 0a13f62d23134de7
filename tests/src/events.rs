//! Reading the tracer's JSON events.
use std::net::IpAddr;

use serde_json::Value;

/// Every event carries all of these (null where not applicable).
pub const FIELDS: &[&str] = &[
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
];

/// The kinds of the tracer's contract.
pub const KINDS: &[&str] = &[
    "state",
    "retransmit",
    "retransmit_synack",
    "reset_sent",
    "reset_received",
];

/// Kinds the tracer added later: its server-side handshake timing (sock_ops on the cgroup
/// root, or the tp_btf srtt fallback) and `leak` (a CLOSE_WAIT socket past
/// `--close-wait-threshold`, found by the sock_diag poller). Accepted, but the tests' counts
/// leave them out.
pub const EXTRA_KINDS: &[&str] = &["syn_received", "passive_established", "passive_rtt", "leak"];

/// The states of an ordinary client socket, client closing first (kernel-facts.md).
pub const CLIENT_PATH: [&str; 6] = [
    "CLOSE",
    "SYN_SENT",
    "ESTABLISHED",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "CLOSE",
];

/// The states of the server's child socket of that connection.
pub const SERVER_PATH: [&str; 6] = [
    "LISTEN",
    "SYN_RECV",
    "ESTABLISHED",
    "CLOSE_WAIT",
    "LAST_ACK",
    "CLOSE",
];

/// An event of one of the contract's [`KINDS`].
pub fn is_core(e: &Value) -> bool {
    KINDS.contains(&e.kind())
}

/// Field access on one event.
pub trait EventExt {
    fn field(&self, k: &str) -> &Value;
    fn str_of(&self, k: &str) -> Option<&str> {
        self.field(k).as_str()
    }
    fn u64_of(&self, k: &str) -> Option<u64> {
        self.field(k).as_u64()
    }
    fn f64_of(&self, k: &str) -> Option<f64> {
        self.field(k).as_f64()
    }
    fn kind(&self) -> &str {
        self.str_of("kind").unwrap_or("")
    }
    fn skaddr(&self) -> &str {
        self.str_of("skaddr").unwrap_or("")
    }
    fn ts_ns(&self) -> u64 {
        self.u64_of("ts_ns").unwrap_or(0)
    }
    fn lport(&self) -> Option<u64> {
        self.u64_of("lport")
    }
    fn rport(&self) -> Option<u64> {
        self.u64_of("rport")
    }
    fn netns(&self) -> Option<u64> {
        self.u64_of("netns")
    }
    fn laddr(&self) -> Option<IpAddr> {
        self.str_of("laddr").and_then(|s| s.parse().ok())
    }
    fn raddr(&self) -> Option<IpAddr> {
        self.str_of("raddr").and_then(|s| s.parse().ok())
    }
    /// A state event old -> new.
    fn is_transition(&self, old: &str, new: &str) -> bool {
        self.kind() == "state"
            && self.str_of("old_state") == Some(old)
            && self.str_of("new_state") == Some(new)
    }
    /// Local or remote port is `p`.
    fn has_port(&self, p: u16) -> bool {
        self.lport() == Some(p as u64) || self.rport() == Some(p as u64)
    }
}

impl EventExt for Value {
    fn field(&self, k: &str) -> &Value {
        self.get(k).unwrap_or(&Value::Null)
    }
}

impl EventExt for &Value {
    fn field(&self, k: &str) -> &Value {
        self.get(k).unwrap_or(&Value::Null)
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One line per event, for assertion messages.
pub fn describe(e: &Value) -> String {
    let what = match e.kind() {
        "state" => format!(
            "{}->{}",
            show(e.field("old_state")),
            show(e.field("new_state"))
        ),
        k => format!(
            "{k}[state={} reason={}]",
            show(e.field("state")),
            show(e.field("reason"))
        ),
    };
    format!(
        "ts={} {:<28} sk={} {} {}:{} -> {}:{} pid={} tid={} comm={} owner={}/{} netns={} dwell_ms={}",
        e.ts_ns(),
        what,
        show(e.field("skaddr")),
        show(e.field("family")),
        show(e.field("laddr")),
        show(e.field("lport")),
        show(e.field("raddr")),
        show(e.field("rport")),
        show(e.field("pid")),
        show(e.field("tid")),
        show(e.field("comm")),
        show(e.field("owner_pid")),
        show(e.field("owner_comm")),
        show(e.field("netns")),
        show(e.field("dwell_ms")),
    )
}

/// Numbered lines, for assertion messages.
pub fn describe_all<'a>(evs: impl IntoIterator<Item = &'a Value>) -> String {
    let mut s = String::new();
    for (i, e) in evs.into_iter().enumerate() {
        s.push_str(&format!("  [{i:3}] {}\n", describe(e)));
    }
    if s.is_empty() {
        s.push_str("  (no events)\n");
    }
    s
}

/// The events on one kernel socket, in time order.
pub fn on_socket<'a>(evs: &'a [Value], skaddr: &str) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = evs.iter().filter(|e| e.skaddr() == skaddr).collect();
    v.sort_by_key(|e| e.ts_ns());
    v
}

/// One socket's life: the events on `first`'s socket address (in its namespace) from `first`
/// on, up to and including its first transition to CLOSE. Kernel socket addresses are reused
/// as soon as a socket is freed, so a bare address match may mix several sockets.
pub fn socket_life<'a>(evs: &'a [Value], first: &Value) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = evs
        .iter()
        .filter(|e| {
            e.skaddr() == first.skaddr() && e.netns() == first.netns() && e.ts_ns() >= first.ts_ns()
        })
        .collect();
    v.sort_by_key(|e| e.ts_ns());
    if let Some(end) = v
        .iter()
        .position(|e| e.kind() == "state" && e.str_of("new_state") == Some("CLOSE"))
    {
        v.truncate(end + 1);
    }
    v
}

/// The state path of one socket's state events: the first event's old state, then every new
/// state, e.g. ["CLOSE", "SYN_SENT", "ESTABLISHED", ...]. Retransmit/reset events are skipped.
pub fn state_path(evs: &[&Value]) -> Vec<String> {
    let mut path = Vec::new();
    for e in evs.iter().filter(|e| e.kind() == "state") {
        if path.is_empty() {
            path.push(show(e.field("old_state")));
        }
        path.push(show(e.field("new_state")));
    }
    path
}

/// The only event matching `pred`; panics (listing all events) if there are none or several.
pub fn the_one<'a>(evs: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = evs.iter().filter(|e| pred(e)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one event that is {what}, found {}:\n{}all events:\n{}",
        found.len(),
        describe_all(found.iter().copied()),
        describe_all(evs)
    );
    found[0]
}

/// Check one event against the JSON contract: every field present, types right, kind known.
/// Returns a list of problems (empty if fine).
pub fn contract_problems(e: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let Some(obj) = e.as_object() else {
        return vec!["not a JSON object".into()];
    };
    for f in FIELDS {
        if !obj.contains_key(*f) {
            p.push(format!("field `{f}` missing"));
        }
    }
    let kind = e.kind();
    if !KINDS.contains(&kind) && !EXTRA_KINDS.contains(&kind) {
        p.push(format!("unknown kind `{kind}`"));
    }
    match e.str_of("time") {
        Some(t) if looks_like_rfc3339_utc(t) => {}
        other => p.push(format!("time {other:?} is not RFC3339 UTC")),
    }
    if e.u64_of("ts_ns").is_none() {
        p.push("ts_ns is not an unsigned integer".into());
    }
    match e.str_of("skaddr") {
        Some(s) if s.starts_with("0x") && u64::from_str_radix(&s[2..], 16).is_ok() => {}
        other => p.push(format!("skaddr {other:?} is not a hex string")),
    }
    match e.str_of("family") {
        Some("ipv4") | Some("ipv6") => {}
        other => p.push(format!("family {other:?}")),
    }
    for f in ["laddr", "raddr"] {
        if !e.field(f).is_null() && e.str_of(f).and_then(|s| s.parse::<IpAddr>().ok()).is_none() {
            p.push(format!("{f} {} is not an address", e.field(f)));
        }
    }
    for f in ["lport", "rport", "pid", "tid", "netns", "owner_pid"] {
        let v = e.field(f);
        if !v.is_null() && v.as_u64().is_none() {
            p.push(format!("{f} {v} is not an unsigned integer"));
        }
    }
    let dw = e.field("dwell_ms");
    if !dw.is_null() && !dw.as_f64().is_some_and(|d| d >= 0.0) {
        p.push(format!("dwell_ms {dw} is not a non-negative number"));
    }
    if kind == "state" {
        if e.str_of("old_state").is_none() || e.str_of("new_state").is_none() {
            p.push("state event without old_state/new_state".into());
        }
    } else if !e.field("old_state").is_null() || !e.field("new_state").is_null() {
        p.push(format!("{kind} event with old_state/new_state set"));
    }
    p
}

fn looks_like_rfc3339_utc(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && (t.ends_with('Z') || t.ends_with("+00:00"))
}
