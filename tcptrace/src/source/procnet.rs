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
    fn reads_this_host() {
        let c = read_counters().unwrap();
        assert!(c.contains_key("ListenOverflows"));
        assert!(c.contains_key("RetransSegs"));
        let s = read_sysctls();
        assert!(s["net.core.somaxconn"].parse::<u32>().unwrap() > 0);
        assert_eq!(s["net.ipv4.ip_local_port_range"].split(' ').count(), 2);
    }
}
