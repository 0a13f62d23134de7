//! Kernel counters (/proc/net/netstat, /proc/net/snmp) and sysctls, for the calling thread's
//! network namespace. They are the ground truth for what the tracepoints cannot see: accept
//! queue overflows, SYN cookies, TIME_WAIT overflows.
use std::collections::BTreeMap;

use anyhow::Context as _;

/// The counters tcptrace reports, as `Group.Name` pairs in the kernel's files.
pub const COUNTERS: [(&str, &str); 15] = [
    ("TcpExt", "ListenOverflows"),
    ("TcpExt", "ListenDrops"),
    ("TcpExt", "TCPReqQFullDrop"),
    ("TcpExt", "TCPReqQFullDoCookies"),
    ("TcpExt", "SyncookiesSent"),
    ("TcpExt", "SyncookiesRecv"),
    ("TcpExt", "SyncookiesFailed"),
    ("TcpExt", "TCPSynRetrans"),
    ("TcpExt", "TCPTimeWaitOverflow"),
    ("TcpExt", "TCPAbortOnData"),
    ("TcpExt", "TCPAbortOnClose"),
    ("Tcp", "ActiveOpens"),
    ("Tcp", "PassiveOpens"),
    ("Tcp", "RetransSegs"),
    ("Tcp", "OutRsts"),
];

/// Sysctls that explain what tcptrace sees (see the README's diagnosis section).
/// Recordings name them by position: new ones go at the end.
pub const SYSCTLS: [&str; 12] = [
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_timestamps",
    // Linux 6.14 and later; before, 1 s.
    "net.ipv4.tcp_tw_reuse_delay",
];

/// Parses the header/value line pairs of /proc/net/netstat and /proc/net/snmp.
pub fn parse_counters(text: &str, out: &mut BTreeMap<String, i64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((g1, names)), Some((g2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if g1 != g2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<i64>() {
                out.insert(format!("{g1}.{n}"), v);
            }
        }
    }
}

/// The counters in [`COUNTERS`] now, keyed by their plain name (`ListenOverflows`).
pub fn read_counters() -> anyhow::Result<BTreeMap<&'static str, i64>> {
    let mut all = BTreeMap::new();
    for f in [
        "/proc/thread-self/net/netstat",
        "/proc/thread-self/net/snmp",
    ] {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
        parse_counters(&text, &mut all);
    }
    Ok(COUNTERS
        .iter()
        .filter_map(|(g, n)| all.get(&format!("{g}.{n}")).map(|v| (*n, *v)))
        .collect())
}

/// TCP sockets in this namespace: (hashed full sockets of both families, listeners included;
/// TIME_WAIT sockets), from /proc/net/sockstat and sockstat6, which the kernel keeps per
/// namespace: two small reads instead of a walk of every namespace's sockets.
pub fn read_sockstat() -> anyhow::Result<(u64, u64)> {
    let v4 = std::fs::read_to_string("/proc/thread-self/net/sockstat")
        .context("reading /proc/thread-self/net/sockstat")?;
    // Without IPv6 there is no sockstat6.
    let v6 = std::fs::read_to_string("/proc/thread-self/net/sockstat6").unwrap_or_default();
    let (inuse4, tw) = sockstat_fields(&v4, "TCP:");
    let (inuse6, _) = sockstat_fields(&v6, "TCP6:");
    Ok((inuse4.unwrap_or(0) + inuse6.unwrap_or(0), tw.unwrap_or(0)))
}

/// `inuse` and `tw` of the line starting with `tag` (`TCP: inuse 5 orphan 0 tw 2 ...`).
fn sockstat_fields(text: &str, tag: &str) -> (Option<u64>, Option<u64>) {
    let Some(line) = text.lines().find_map(|l| l.strip_prefix(tag)) else {
        return (None, None);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        words
            .chunks(2)
            .find(|kv| kv[0] == name)
            .and_then(|kv| kv.get(1)?.parse().ok())
    };
    (field("inuse"), field("tw"))
}

/// The sysctls in [`SYSCTLS`] that exist here, as text (whitespace collapsed).
pub fn read_sysctls() -> BTreeMap<&'static str, String> {
    SYSCTLS
        .iter()
        .filter_map(|name| {
            let path = format!("/proc/sys/{}", name.replace('.', "/"));
            let v = std::fs::read_to_string(path).ok()?;
            Some((*name, v.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 1 2 3\nIpExt: InNoRoutes\nIpExt: 9\n";
        let mut m = BTreeMap::new();
        parse_counters(text, &mut m);
        assert_eq!(m["TcpExt.ListenOverflows"], 2);
        assert_eq!(m["IpExt.InNoRoutes"], 9);
    }

    #[test]
    fn parses_sockstat() {
        let v4 = "sockets: used 9\nTCP: inuse 5 orphan 1 tw 7 alloc 9 mem 2\nUDP: inuse 3 mem 0\n";
        assert_eq!(sockstat_fields(v4, "TCP:"), (Some(5), Some(7)));
        assert_eq!(sockstat_fields("TCP6: inuse 4\nUDP6: inuse 0\n", "TCP6:"), (Some(4), None));
        assert_eq!(sockstat_fields("", "TCP6:"), (None, None));
        // This namespace's own count includes a listener made here.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (inuse, _) = read_sockstat().unwrap();
        assert!(inuse >= 1, "TCP inuse {inuse} with a listener open");
        drop(l);
    }

    #[test]
    fn reads_this_host() {
        let c = read_counters().unwrap();
        assert!(c.contains_key("ListenOverflows"));
        assert!(c.contains_key("RetransSegs"));
        let s = read_sysctls();
        assert!(s["net.core.somaxconn"].parse::<u32>().unwrap() > 0);
        assert_eq!(s["net.ipv4.ip_local_port_range"].split(' ').count(), 2);
    }
}
