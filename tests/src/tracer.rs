//! The tracer under test, as a child process.
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::events::{contract_problems, describe, describe_all};

/// How long the tracer may take to load and attach.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to exit after SIGINT/SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events may reach user space ~25 ms after they happen: wait this long before stopping.
pub const SETTLE: Duration = Duration::from_millis(300);

/// `$TCPTRACE_BIN`, else `<workspace>/target/release/tcptrace`. Panics if it does not exist.
pub fn tracer_bin() -> PathBuf {
    let p = match std::env::var_os("TCPTRACE_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tcptrace"),
    };
    assert!(
        p.is_file(),
        "tracer binary {} not found: build it (cargo build --release -p tcptrace) or set TCPTRACE_BIN",
        p.display()
    );
    p.canonicalize().unwrap_or(p)
}

/// A running tracer: killed (SIGKILL) on drop if still running.
pub struct Tracer {
    child: Option<Child>,
    args: Vec<String>,
    spawned: Instant,
    ready: Instant,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr_text: Arc<Mutex<String>>,
    stderr: Option<JoinHandle<()>>,
}

/// Everything a finished tracer left behind.
#[derive(Debug)]
pub struct TracerOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    /// stdout lines that parsed as JSON.
    pub events: Vec<Value>,
    /// stdout lines that did not.
    pub bad_lines: Vec<String>,
    pub stderr: String,
    pub spawned: Instant,
    pub ready: Instant,
    pub exited: Instant,
}

/// The summary line printed on exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub received: u64,
    pub shown: u64,
    pub lost: u64,
    pub undecodable: u64,
    pub evicted: u64,
    pub secs: f64,
}

impl Tracer {
    /// `tcptrace events --json ARGS...`, waiting for the "attached" line.
    pub fn events(args: &[&str]) -> Tracer {
        let mut all = vec!["events", "--json"];
        all.extend_from_slice(args);
        Tracer::start(&all)
    }

    /// `tcptrace watch --netns NS --json-summary SUMMARY EXTRA...`, waiting likewise.
    pub fn watch(ns: &crate::Netns, summary: &str, extra: &[&str]) -> Tracer {
        let mut all = vec!["watch", "--netns", ns.path_str(), "--json-summary", summary];
        all.extend_from_slice(extra);
        Tracer::start(&all)
    }

    /// Spawn the tracer with exactly `args` and wait (up to [`READY_TIMEOUT`]) for the line
    /// "tcptrace: attached ..." on stderr. Panics, showing stderr, if it exits or times out first.
    pub fn start(args: &[&str]) -> Tracer {
        let bin = tracer_bin();
        let spawned = Instant::now();
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let stdout = thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<()>();
        let text = stderr_text.clone();
        let stderr = thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let ready = line.starts_with("tcptrace: attached ");
                {
                    let mut t = text.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        let mut t = Tracer {
            child: Some(child),
            args: args.iter().map(|s| s.to_string()).collect(),
            spawned,
            ready: spawned,
            stdout: Some(stdout),
            stderr_text,
            stderr: Some(stderr),
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(()) => t.ready = Instant::now(),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "tracer {:?} did not print `tcptrace: attached ` within {READY_TIMEOUT:?}; stderr so far:\n{}",
                t.args,
                t.stderr_so_far()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = t.child.as_mut().unwrap().wait();
                panic!(
                    "tracer {:?} closed stderr ({st:?}) without printing `tcptrace: attached `; stderr:\n{}",
                    t.args,
                    t.stderr_so_far()
                )
            }
        }
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr_text.lock().unwrap().clone()
    }

    /// When the ready line arrived.
    pub fn ready_at(&self) -> Instant {
        self.ready
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Wait [`SETTLE`] for late events, send SIGINT, wait for the exit.
    pub fn stop(self) -> TracerOutput {
        thread::sleep(SETTLE);
        self.signal(libc::SIGINT);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// Wait for the tracer to exit by itself; past `limit`, kill it and panic.
    pub fn wait_exit(mut self, limit: Duration) -> TracerOutput {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                break st;
            }
            if start.elapsed() > limit {
                let c = self.child.as_mut().unwrap();
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "tracer {:?} still running {limit:?} after it was asked to stop (or its --duration); killed it. stderr:\n{}",
                    self.args,
                    self.stderr_so_far()
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let exited = Instant::now();
        self.child = None;
        let lines = self.stdout.take().unwrap().join().expect("stdout reader");
        let _ = self.stderr.take().unwrap().join();
        let mut events = Vec::new();
        let mut bad_lines = Vec::new();
        for l in lines {
            match serde_json::from_str::<Value>(&l) {
                Ok(v) if v.is_object() => events.push(v),
                _ => bad_lines.push(l),
            }
        }
        TracerOutput {
            args: self.args.clone(),
            status,
            events,
            bad_lines,
            stderr: self.stderr_so_far(),
            spawned: self.spawned,
            ready: self.ready,
            exited,
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl TracerOutput {
    /// The summary line, parsed.
    pub fn summary(&self) -> Option<Summary> {
        self.stderr.lines().find_map(parse_summary)
    }

    /// Lines on stderr that start with "tcptrace: error: ".
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("tcptrace: error: "))
            .collect()
    }

    /// Everything a clean run promises: exit 0, only JSON on stdout, every event complete,
    /// a summary whose "shown" is the number of lines printed, nothing lost or undecodable,
    /// no error line.
    pub fn assert_clean(&self) {
        assert!(
            self.status.success(),
            "tracer {:?} exited with {}; stderr:\n{}",
            self.args,
            self.status,
            self.stderr
        );
        assert!(
            self.bad_lines.is_empty(),
            "tracer {:?} printed non-JSON lines on stdout:\n{}",
            self.args,
            self.bad_lines.join("\n")
        );
        assert!(
            self.error_lines().is_empty(),
            "tracer {:?} printed error lines:\n{}",
            self.args,
            self.stderr
        );
        for e in &self.events {
            let p = contract_problems(e);
            assert!(
                p.is_empty(),
                "event breaks the JSON contract ({}):\n  {}\nraw: {e}",
                p.join("; "),
                describe(e)
            );
        }
        let s = self.summary().unwrap_or_else(|| {
            panic!(
                "tracer {:?}: no summary line `tcptrace: N events received, M shown, ...` on stderr:\n{}",
                self.args, self.stderr
            )
        });
        assert_eq!(
            s.shown,
            self.events.len() as u64,
            "summary says {} shown but {} JSON lines were printed; stderr:\n{}",
            s.shown,
            self.events.len(),
            self.stderr
        );
        assert!(s.received >= s.shown, "summary {s:?}: received < shown");
        assert_eq!(s.lost, 0, "tracer lost events: {}", self.stderr);
        assert_eq!(s.undecodable, 0, "undecodable events: {}", self.stderr);
    }

    /// Panic listing all events, with `msg` first.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\ntracer {:?} printed {} events:\n{}",
            self.args,
            self.events.len(),
            describe_all(&self.events)
        )
    }
}

/// The closing line of an `events` run (which has the "M shown" part).
pub fn parse_summary(line: &str) -> Option<Summary> {
    let c = crate::outputs::parse_closing(line)?;
    Some(Summary {
        received: c.received,
        shown: c.shown?,
        lost: c.lost,
        undecodable: c.undecodable,
        evicted: c.evicted,
        secs: c.secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line() {
        let s = parse_summary(
            "tcptrace: 4 events received, 3 shown, 0 lost (ring buffer full or skipped by the kernel), 1 undecodable, 2 sockets evicted, 4.0s",
        )
        .unwrap();
        assert_eq!(
            s,
            Summary {
                received: 4,
                shown: 3,
                lost: 0,
                undecodable: 1,
                evicted: 2,
                secs: 4.0
            }
        );
        assert!(parse_summary("tcptrace: attached 5 programs").is_none());
    }
}
