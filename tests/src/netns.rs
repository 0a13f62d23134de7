//! Network namespaces made by (and for) one test.
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::cmd::run_ok;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the tracer's `ts_ns`).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A network namespace `tcptrace-t-<pid>-<n>` with `lo` up; `ip netns del` on drop.
pub struct Netns {
    name: String,
    path: PathBuf,
    inode: u64,
}

impl Netns {
    pub fn new() -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("tcptrace-t-{}-{}", std::process::id(), n);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        // From here on the guard exists, so a failure below still deletes the namespace.
        let mut ns = Netns {
            path: PathBuf::from(format!("/var/run/netns/{name}")),
            name,
            inode: 0,
        };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns.inode = std::fs::metadata(&ns.path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", ns.path.display()))
            .ino();
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// The namespace's inode number (what the tracer reports as `netns`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Run `f` inside the namespace on a fresh thread named `tt-netns`; see [`Netns::run_named`].
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.run_named("tt-netns", f)
    }

    /// Run `f` on a fresh thread called `thread_name` (its comm, at most 15 bytes) that has
    /// joined the namespace (setns is per thread). Threads it spawns are in the namespace too;
    /// sockets it makes stay in the namespace wherever they are used later. A panic in `f` is
    /// propagated.
    pub fn run_named<F, R>(&self, thread_name: &str, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = self.path.clone();
        std::thread::scope(|s| {
            let h = std::thread::Builder::new()
                .name(thread_name.to_string())
                .spawn_scoped(s, move || {
                    enter_netns(&path);
                    f()
                })
                .expect("spawn thread");
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// `ip netns exec NAME program` as a Command to add arguments to.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run a command inside the namespace and return its output (whatever its exit status).
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut c = self.command(args[0]);
        c.args(&args[1..]).stdin(Stdio::null());
        c.output()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// Move the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &Path) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: a valid fd; CLONE_NEWNET only affects the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns({}) failed: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Load an nftables ruleset inside the namespace (`ip netns exec NAME nft -f -`). The tables die
/// with the namespace.
pub fn nft(ns: &Netns, ruleset: &str) {
    let mut c = ns.command("nft");
    c.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .expect("write ruleset to nft");
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft -f - in {} failed ({}):\n{}\nruleset:\n{ruleset}",
        ns.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
