//! Error paths: each failure the tracer can meet on a real host gives exit status 1, nothing on
//! stdout, and exactly one `tcptrace: error: ` line that names the fix. The broken host is made
//! in a private mount namespace (unshare -m), so nothing leaks out of the test.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tcptrace_tests::cmd::{Finished, run_with_timeout};
use tcptrace_tests::tracer_bin;

/// A tracer that does not fail keeps running: give up (and fail) after this.
const LIMIT: Duration = Duration::from_secs(30);

fn bin() -> String {
    let b = tracer_bin().to_str().expect("utf-8 path").to_string();
    assert!(
        !b.contains('\''),
        "tracer path {b} has a quote; cannot use it in sh -c"
    );
    b
}

fn run(cmd: &mut Command) -> Finished {
    run_with_timeout(cmd, LIMIT)
}

/// `sh -c SCRIPT` in a private mount namespace.
fn in_private_mounts(script: &str) -> Finished {
    run(Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", script]))
}

/// Exit 1, nothing on stdout, exactly one error line, which contains every one of `all` and
/// at least one of `any` (if given). Returns the error line.
fn assert_error(f: &Finished, all: &[&str], any: &[&str]) -> String {
    let show = format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        f.status, f.stdout, f.stderr
    );
    assert_eq!(f.status.code(), Some(1), "want exit status 1; {show}");
    assert!(f.stdout.is_empty(), "want nothing on stdout; {show}");
    let errors: Vec<&str> = f
        .stderr
        .lines()
        .filter(|l| l.starts_with("tcptrace: error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "want exactly one `tcptrace: error: ` line; {show}"
    );
    let line = errors[0];
    for n in all {
        assert!(
            line.contains(n),
            "the error line should mention `{n}`; {show}"
        );
    }
    if !any.is_empty() {
        assert!(
            any.iter().any(|n| line.contains(n)),
            "the error line should mention one of {any:?}; {show}"
        );
    }
    line.to_string()
}

/// A copy of the tracer in a fresh world-readable directory (the build tree may not be
/// reachable by other users); removed on drop.
struct PublicCopy(PathBuf);

impl PublicCopy {
    fn new() -> PublicCopy {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-tests-{}-unpriv", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let guard = PublicCopy(dir);
        std::fs::set_permissions(&guard.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(tracer_bin(), guard.bin()).unwrap();
        std::fs::set_permissions(guard.bin(), std::fs::Permissions::from_mode(0o755)).unwrap();
        guard
    }
    fn bin(&self) -> PathBuf {
        self.0.join("tcptrace")
    }
}

impl Drop for PublicCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn unprivileged_user_is_told_to_use_root() {
    let copy = PublicCopy::new();
    let b = copy.bin();
    let f = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&b)
        .arg("events"));
    // If setpriv itself failed the tracer never ran: say so instead of blaming it.
    assert!(
        !f.stderr.contains("setpriv:"),
        "setpriv failed, the tracer did not run: {}",
        f.stderr
    );
    assert_error(&f, &[], &["root", "sudo", "CAP_BPF"]);
}

/// The capabilities (hex mask) a command starts with, as /proc/self/status shows them.
fn cap_eff(prefix: &[&str]) -> u64 {
    let out = Command::new(prefix[0])
        .args(&prefix[1..])
        .args(["grep", "^CapEff:", "/proc/self/status"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    u64::from_str_radix(s.trim().trim_start_matches("CapEff:").trim(), 16)
        .unwrap_or_else(|e| panic!("cannot read CapEff from {s:?}: {e}"))
}

const DROP_SYS_ADMIN: &str = "setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin";

#[test]
fn tracefs_missing_and_not_mountable() {
    // Check the setup: without CAP_SYS_ADMIN (21) but with CAP_PERFMON (38) and CAP_BPF (39).
    let caps = cap_eff(&DROP_SYS_ADMIN.split(' ').collect::<Vec<_>>());
    assert!(
        caps & (1 << 21) == 0 && caps & (1 << 38) != 0 && caps & (1 << 39) != 0,
        "setpriv did not give the capabilities this test needs: CapEff {caps:x}"
    );
    let f = in_private_mounts(&format!(
        "mount -t tmpfs none /sys/kernel/tracing || exit 97; \
         mount -t tmpfs none /sys/kernel/debug 2>/dev/null; \
         exec {DROP_SYS_ADMIN} '{}' events",
        bin()
    ));
    assert_ne!(
        f.status.code(),
        Some(97),
        "could not hide tracefs: {}",
        f.stderr
    );
    assert_error(&f, &["tracefs", "mount -t tracefs"], &[]);
}

#[test]
fn tracefs_missing_but_mountable_is_mounted() {
    let f = in_private_mounts(&format!(
        "mount -t tmpfs none /sys/kernel/tracing || exit 97; \
         mount -t tmpfs none /sys/kernel/debug 2>/dev/null; \
         exec '{}' events --json --duration 1s",
        bin()
    ));
    let show = format!("exit {}\nstderr:\n{}", f.status, f.stderr);
    assert_ne!(f.status.code(), Some(97), "could not hide tracefs: {show}");
    assert_eq!(f.status.code(), Some(0), "{show}");
    assert!(
        f.stderr
            .lines()
            .any(|l| l.starts_with("tcptrace: attached ")),
        "it did not attach; {show}"
    );
    assert!(
        f.stderr
            .lines()
            .any(|l| l.contains("tracefs") && l.contains("mounted")),
        "it should say it mounted tracefs; {show}"
    );
    assert!(!f.stderr.contains("tcptrace: error: "), "{show}");
}

#[test]
fn no_btf() {
    let f = in_private_mounts(&format!(
        "mount -t tmpfs none /sys/kernel/btf || exit 97; exec '{}' events",
        bin()
    ));
    assert_ne!(
        f.status.code(),
        Some(97),
        "could not hide BTF: {}",
        f.stderr
    );
    assert_error(&f, &["BTF", "CONFIG_DEBUG_INFO_BTF"], &[]);
}

#[test]
fn missing_tracepoint_is_named() {
    let dir = "/sys/kernel/tracing/events/tcp/tcp_retransmit_synack";
    let f = in_private_mounts(&format!(
        "mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || exit 96; \
         mount -t tmpfs none {dir} || exit 97; exec '{}' events",
        bin()
    ));
    assert!(
        !matches!(f.status.code(), Some(96 | 97)),
        "could not set up the missing tracepoint: {}",
        f.stderr
    );
    assert_error(&f, &["tcp/tcp_retransmit_synack"], &[]);
}

#[test]
fn nonexistent_netns_path() {
    let f = run(Command::new(bin()).args(["events", "--netns", "/nonexistent"]));
    assert_error(&f, &["/nonexistent"], &[]);
}

#[test]
fn nonexistent_netns_name() {
    let name = format!("tcptrace-t-{}-nosuch", std::process::id());
    assert!(!Path::new("/var/run/netns").join(&name).exists());
    let f = run(Command::new(bin()).args(["events", "--netns", &name]));
    assert_error(&f, &[&name], &[]);
}

/// clap's usage errors: exit 2, nothing on stdout.
fn assert_usage_error(args: &[&str]) {
    let f = run(Command::new(bin()).args(args));
    assert_eq!(
        f.status.code(),
        Some(2),
        "{args:?}: want usage error (exit 2); exit {}\nstderr:\n{}",
        f.status,
        f.stderr
    );
    assert!(
        f.stdout.is_empty(),
        "{args:?}: stdout should be empty: {}",
        f.stdout
    );
    assert!(!f.stderr.is_empty(), "{args:?}: stderr should explain");
}

#[test]
fn bad_duration_is_usage_error() {
    assert_usage_error(&["events", "--duration", "soon"]);
}

#[test]
fn bad_ring_size_is_usage_error() {
    assert_usage_error(&["events", "--ring-size", "3M"]);
}
