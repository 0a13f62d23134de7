//! Network namespaces: finding them, and doing work inside one.
//!
//! Netlink sockets, /proc/thread-self/net/* and /proc/sys/net/* all answer for the namespace of
//! the thread that opens them, so work for a namespace runs on a short-lived thread that first
//! joins it with setns(CLONE_NEWNET).
use std::{
    collections::BTreeMap,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};

/// A namespace to look into: its inode and a path that opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsTarget {
    pub inode: u32,
    pub path: PathBuf,
}

fn inode_of(p: &Path) -> Option<u32> {
    std::fs::metadata(p)
        .ok()
        .and_then(|m| u32::try_from(m.ino()).ok())
}

/// Every network namespace in use: those of running processes and those bind-mounted under
/// /var/run/netns. One path per namespace.
pub fn all_namespaces() -> Vec<NetnsTarget> {
    let mut by_inode: BTreeMap<u32, PathBuf> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/var/run/netns") {
        for e in dir.flatten() {
            let p = e.path();
            if let Some(i) = inode_of(&p) {
                by_inode.entry(i).or_insert(p);
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if !e
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let p = e.path().join("ns/net");
            if let Some(i) = inode_of(&p) {
                by_inode.entry(i).or_insert(p);
            }
        }
    }
    by_inode
        .into_iter()
        .map(|(inode, path)| NetnsTarget { inode, path })
        .collect()
}

/// The namespace with this inode, found among those in use.
pub fn find(inode: u32) -> anyhow::Result<NetnsTarget> {
    all_namespaces()
        .into_iter()
        .find(|t| t.inode == inode)
        .ok_or_else(|| anyhow!("no network namespace with inode {inode} is in use"))
}

/// Runs `f` on a fresh thread that has joined `target`. Fails if its path now opens another
/// namespace (a /proc/PID path whose process exited and whose PID was reused).
pub fn run_in<T: Send + 'static>(
    target: &NetnsTarget,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = &target.path;
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let shown = path.display().to_string();
    let opened = file.metadata().map(|m| m.ino()).ok();
    if opened != Some(u64::from(target.inode)) {
        bail!(
            "{shown} no longer opens network namespace {} (its process exited, or it was made anew)",
            target.inode
        );
    }
    std::thread::Builder::new()
        .name("tcptrace-netns".into())
        .spawn(move || {
            // Already there (the usual case for the host's namespace): no setns, which also
            // keeps working after --user dropped CAP_SYS_ADMIN.
            let here = std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| m.ino())
                .ok();
            if here.is_some() && here == opened {
                return f();
            }
            // SAFETY: setns on this thread only, with a valid namespace fd.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!(
                    "cannot enter network namespace {shown}: {}",
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .context("spawning a thread")?
        .join()
        .map_err(|_| anyhow!("namespace worker thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_namespace_and_works_inside_it() {
        let own = inode_of(Path::new("/proc/self/ns/net")).unwrap();
        let all = all_namespaces();
        assert!(all.iter().any(|t| t.inode == own));
        assert_eq!(find(own).unwrap().inode, own);
        let seen = run_in(&find(own).unwrap(), move || {
            Ok(inode_of(Path::new("/proc/thread-self/ns/net")))
        })
        .unwrap();
        assert_eq!(seen, Some(own));
        // A path that opens another namespace than the one it was found for is refused.
        let moved = NetnsTarget {
            inode: own.wrapping_add(1),
            path: PathBuf::from("/proc/self/ns/net"),
        };
        let e = run_in(&moved, || Ok(())).unwrap_err();
        assert!(e.to_string().contains("no longer"), "{e}");
    }
}
