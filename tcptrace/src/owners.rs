//! Who owns a socket: socket inode -> process, the way `ss -p` finds it (/proc/PID/fd links to
//! `socket:[INODE]`). Done lazily, only for sockets a finding reports, cached, and bounded in
//! time per scan so a host with many processes cannot stall the tracer.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// The process's cgroup (v2 path, or the first v1 line), e.g. a container's.
    pub cgroup: Option<String>,
}

#[derive(Debug, Default)]
pub struct Owners {
    cache: HashMap<u32, Option<ProcessInfo>>,
    /// Scans that ran out of time before looking at every process.
    pub incomplete_scans: u64,
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim_end().to_string())
}

pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    let comm = read_trim(&format!("/proc/{pid}/comm"))?;
    let cgroup = read_trim(&format!("/proc/{pid}/cgroup")).and_then(|text| {
        let lines: Vec<&str> = text.lines().collect();
        // cgroup v2 line is "0::/path"; on hybrid hosts prefer it, else the first line.
        let line = lines
            .iter()
            .find(|l| l.starts_with("0::"))
            .or(lines.first())?;
        line.splitn(3, ':').nth(2).map(str::to_string)
    });
    Some(ProcessInfo { pid, comm, cgroup })
}

impl Owners {
    pub fn get(&self, inode: u32) -> Option<&ProcessInfo> {
        self.cache.get(&inode).and_then(Option::as_ref)
    }

    /// Resolves the inodes not already known, scanning /proc for at most `budget`.
    pub fn resolve(&mut self, inodes: &[u32], budget: Duration) {
        let mut missing: Vec<u32> = inodes
            .iter()
            .copied()
            .filter(|i| *i != 0 && !self.cache.contains_key(i))
            .collect();
        if missing.is_empty() {
            return;
        }
        missing.sort_unstable();
        missing.dedup();
        let started = Instant::now();
        let Ok(proc_dir) = std::fs::read_dir("/proc") else {
            return;
        };
        let mut left = missing.len();
        let mut complete = true;
        'procs: for entry in proc_dir.flatten() {
            if started.elapsed() > budget {
                complete = false;
                break;
            }
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let t = target.to_string_lossy();
                let Some(ino) = t
                    .strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if missing.binary_search(&ino).is_ok() && !self.cache.contains_key(&ino) {
                    self.cache.insert(ino, process_info(pid));
                    left -= 1;
                    if left == 0 {
                        break 'procs;
                    }
                }
            }
        }
        if complete {
            // Looked everywhere: the rest have no process (orphaned, or closed meanwhile).
            for i in missing {
                self.cache.entry(i).or_insert(None);
            }
        } else {
            self.incomplete_scans += 1;
        }
        // Bound the cache: inodes are not reused quickly, and findings are few.
        if self.cache.len() > 100_000 {
            self.cache.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn finds_the_owner_of_our_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino() as u32;
        let mut o = Owners::default();
        o.resolve(&[ino], Duration::from_secs(5));
        let p = o.get(ino).expect("owner found");
        assert_eq!(p.pid, std::process::id());
        assert!(!p.comm.is_empty());
        assert!(p.cgroup.is_some());
    }
}
