//! Which events the user asked to see. One filter, applied the same way in every mode.
use std::{net::SocketAddr, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{Context as _, bail};

use crate::event::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep events whose local or remote port is one of these (empty: all).
    pub ports: Vec<u16>,
    /// Keep events of this process: run by it, or on a socket it owns.
    pub pid: Option<u32>,
    /// Keep events in this network namespace (inode number).
    pub netns: Option<u32>,
    pub family: Option<Family>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// `owner_pid`: the socket's owner if the lifecycle table knows it.
    pub fn matches(&self, ev: &Event, owner_pid: Option<u32>) -> bool {
        if !self.matches_socket(ev.netns, &ev.local, &ev.remote) {
            return false;
        }
        if let Some(pid) = self.pid
            && ev.pid != pid
            && owner_pid != Some(pid)
        {
            return false;
        }
        true
    }
}

impl Filter {
    /// The namespace, family and port parts of the filter (what a socket snapshot can be
    /// checked against; owners are not known there).
    pub fn matches_socket(&self, netns: u32, local: &SocketAddr, remote: &SocketAddr) -> bool {
        if self.netns.is_some_and(|ns| ns != netns) {
            return false;
        }
        if let Some(f) = self.family
            && (f == Family::V6) != is_v6(local)
        {
            return false;
        }
        self.ports.is_empty()
            || self
                .ports
                .iter()
                .any(|&p| p == local.port() || p == remote.port())
    }

    /// Whether the socket part of the filter keeps every socket of namespace `netns`, so that
    /// the namespace's own counts (sockstat) stand for what the filter keeps.
    pub fn keeps_all_of(&self, netns: u32) -> bool {
        self.netns.is_none_or(|ns| ns == netns) && self.family.is_none() && self.ports.is_empty()
    }
}

fn is_v6(a: &SocketAddr) -> bool {
    // v4-mapped IPv6 addresses are IPv4 connections on a dual-stack socket.
    match a {
        SocketAddr::V4(_) => false,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_none(),
    }
}

/// Parses `--netns`: an inode number, or a path whose inode is the namespace's
/// (`/var/run/netns/NAME`, `/proc/PID/ns/net`), or a bare name under /var/run/netns.
pub fn parse_netns(arg: &str) -> anyhow::Result<u32> {
    if let Ok(n) = arg.parse::<u32>() {
        return Ok(n);
    }
    let path = if arg.contains('/') {
        Path::new(arg).to_path_buf()
    } else {
        Path::new("/var/run/netns").join(arg)
    };
    let meta = std::fs::metadata(&path).with_context(|| {
        format!(
            "--netns {arg}: cannot stat {} (give an inode number, a /var/run/netns/NAME path or /proc/PID/ns/net)",
            path.display()
        )
    })?;
    let ino = meta.ino();
    let Ok(ino) = u32::try_from(ino) else {
        bail!(
            "--netns {arg}: inode {ino} of {} is not a namespace inode",
            path.display()
        );
    };
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Comm, EventKind, TcpState};

    fn ev(local: &str, remote: &str, pid: u32, netns: u32) -> Event {
        Event {
            ts_ns: 0,
            skaddr: 1,
            pid,
            tid: pid,
            comm: Comm::default(),
            netns,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            kind: EventKind::State {
                old: TcpState::SynSent,
                new: TcpState::Established,
            },
            gap: false,
        }
    }

    #[test]
    fn namespace_counts_stand_only_for_an_unfiltered_namespace() {
        assert!(Filter::default().keeps_all_of(7));
        let pid = Filter {
            pid: Some(1),
            ..Default::default()
        };
        assert!(pid.keeps_all_of(7), "snapshots are not filtered by process");
        let ns = Filter {
            netns: Some(7),
            ..Default::default()
        };
        assert!(ns.keeps_all_of(7) && !ns.keeps_all_of(8));
        let port = Filter {
            ports: vec![80],
            ..Default::default()
        };
        assert!(!port.keeps_all_of(7));
        let family = Filter {
            family: Some(Family::V6),
            ..Default::default()
        };
        assert!(!family.keeps_all_of(7));
    }

    #[test]
    fn filters_combine() {
        let e = ev("127.0.0.1:5000", "127.0.0.1:80", 10, 7);
        assert!(Filter::default().matches(&e, None));
        let f = Filter {
            ports: vec![443, 80],
            ..Default::default()
        };
        assert!(f.matches(&e, None));
        let f = Filter {
            ports: vec![443],
            ..Default::default()
        };
        assert!(!f.matches(&e, None));
        let f = Filter {
            pid: Some(99),
            ..Default::default()
        };
        assert!(!f.matches(&e, None));
        assert!(f.matches(&e, Some(99)), "owner counts");
        let f = Filter {
            netns: Some(8),
            ..Default::default()
        };
        assert!(!f.matches(&e, None));
        let f = Filter {
            family: Some(Family::V6),
            ..Default::default()
        };
        assert!(!f.matches(&e, None));
        let mapped = ev("[::ffff:127.0.0.1]:5000", "[::ffff:127.0.0.1]:80", 1, 1);
        assert!(!f.matches(&mapped, None), "v4-mapped is IPv4");
        assert!(f.matches(&ev("[::1]:1", "[::1]:2", 1, 1), None));
    }

    #[test]
    fn netns_by_number_and_path() {
        assert_eq!(parse_netns("4026531840").unwrap(), 4026531840);
        let own = parse_netns("/proc/self/ns/net").unwrap();
        assert!(own > 0);
        let err = parse_netns("/nonexistent/ns").unwrap_err().to_string();
        assert!(err.contains("cannot stat /nonexistent/ns"), "{err}");
        let err = parse_netns("no-such-ns-name").unwrap_err().to_string();
        assert!(err.contains("/var/run/netns/no-such-ns-name"), "{err}");
    }
}
