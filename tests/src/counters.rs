//! The kernel's TCP counters (/proc/net/snmp and /proc/net/netstat) as one namespace sees them.
use std::collections::HashMap;

use crate::netns::Netns;

/// Counters by "Group.Name", e.g. "Tcp.RetransSegs", "TcpExt.ListenOverflows".
#[derive(Debug, Clone, Default)]
pub struct Counters(pub HashMap<String, i64>);

impl Counters {
    /// Read them inside `ns` (through /proc/thread-self, which follows the reading thread's
    /// namespace; /proc/net follows the process's).
    pub fn read(ns: &Netns) -> Counters {
        ns.run(|| {
            let mut m = HashMap::new();
            for f in [
                "/proc/thread-self/net/snmp",
                "/proc/thread-self/net/netstat",
            ] {
                let text = std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {f}: {e}"));
                parse_into(&text, &mut m);
            }
            Counters(m)
        })
    }

    pub fn get(&self, key: &str) -> i64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no counter {key} in /proc/net/snmp or /proc/net/netstat"))
    }

    /// `later - self` for one counter.
    pub fn delta(&self, later: &Counters, key: &str) -> i64 {
        later.get(key) - self.get(key)
    }
}

/// The files come in pairs of lines: "Group: Name1 Name2 ..." then "Group: v1 v2 ...".
pub fn parse_into(text: &str, m: &mut HashMap<String, i64>) {
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((g1, n)), Some((g2, v))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        if g1 != g2 {
            continue;
        }
        for (name, val) in n.split_whitespace().zip(v.split_whitespace()) {
            if let Ok(val) = val.parse::<i64>() {
                m.insert(format!("{g1}.{name}"), val);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pairs() {
        let mut m = HashMap::new();
        parse_into(
            "Tcp: RtoAlgorithm MaxConn RetransSegs\nTcp: 1 -1 7\nTcpExt: ListenDrops\nTcpExt: 3\n",
            &mut m,
        );
        assert_eq!(m["Tcp.MaxConn"], -1);
        assert_eq!(m["Tcp.RetransSegs"], 7);
        assert_eq!(m["TcpExt.ListenDrops"], 3);
    }
}
