//! `cargo xtask bench`: what tcptrace costs, measured side by side with the alternatives.
//!
//! A loopback connection churn of the project's own (connect, optional small write, close; the
//! client closes first, so each connection makes the ten ordinary transitions) runs in a private
//! network namespace tuned so TIME_WAIT reuse does not cap the rate (tcp_tw_reuse=1, a wide
//! ip_local_port_range, tcp_tw_reuse_delay=1 ms). Each worker thread does connect, accept, close,
//! close in lockstep, which bounds the connections in flight (an overflowing accept queue would
//! stall connects for 1 s). Rounds interleave the configurations — no tracer, `tcptrace watch`
//! (in-kernel aggregation; also with `--passive-method sock-ops`, which times handshakes from the
//! SYN with a sock_ops program),
//! `tcptrace watch --aggregate user`,
//! `tcptrace events --json > /dev/null`, and bpftrace keeping per-state dwell histograms in the
//! kernel (where installed) — and each configuration is compared with the same round's no-tracer
//! run, because this machine is shared and noisy: figures are medians of paired ratios.
use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};

/// bpftrace's best case: per-state dwell histograms kept in the kernel, keyed by socket address.
const BPFTRACE_DWELL: &str = r#"
tracepoint:sock:inet_sock_set_state /args->protocol == 6/ {
  $sk = args->skaddr;
  if (@start[$sk]) { @dwell[args->oldstate] = hist(nsecs - @start[$sk]); }
  if (args->newstate == 7) { delete(@start[$sk]); } else { @start[$sk] = nsecs; }
}
END { clear(@start); }
"#;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub rounds: usize,
    pub seconds: u64,
    pub threads: usize,
    /// Connections per second for the fixed-rate run (0: skip it).
    pub fixed_rate: u64,
    pub tracer: PathBuf,
    /// Only these configurations (plus the no-tracer baseline); empty: all.
    pub only: Vec<String>,
    /// Also report each program's cost, from extra rounds with kernel.bpf_stats_enabled on.
    pub bpf_stats: bool,
    /// Another tcptrace binary whose `watch` runs side by side (e.g. the previous commit's).
    pub compare: Option<PathBuf>,
}

/// A network namespace for the load, removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Netns> {
        let name = format!("tcptrace-bench-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        run(Command::new("ip").args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]))?;
        for (k, v) in [
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.ipv4.ip_local_port_range", "1024 65535"),
            ("net.ipv4.tcp_tw_reuse_delay", "1"),
        ] {
            // tcp_tw_reuse_delay exists from Linux 6.14 on; without it reuse waits 1 s.
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.name,
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("{k}={v}"),
                ])
                .status();
        }
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

/// Runs the churn for `secs` with `threads` workers; returns connections made. With `rate`,
/// paces the workers to that many connections per second in total.
fn churn(ns: &Path, threads: usize, secs: u64, rate: Option<u64>) -> Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (stop, total, ns) = (stop.clone(), total.clone(), ns.to_path_buf());
        let per_thread = rate.map(|r| r as f64 / threads as f64);
        handles.push(std::thread::spawn(move || -> Result<()> {
            let f = File::open(&ns)?;
            // SAFETY: setns on this thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let l = TcpListener::bind("127.0.0.1:0")?;
            let addr = l.local_addr()?;
            let started = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let c = TcpStream::connect(addr)?;
                let (s, _) = l.accept()?;
                drop(c); // the client closes first
                drop(s);
                n += 1;
                if let Some(r) = per_thread {
                    let due = Duration::from_secs_f64(n as f64 / r);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            total.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow!("load thread panicked"))??;
    }
    Ok(total.load(Ordering::Relaxed))
}

/// Resident memory of a process (VmRSS), KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soak: `tcptrace watch` (defaults) under a steady churn of `rate` connections/s for
/// `minutes`, its resident memory sampled every 10 s. Memory must stay flat: the figures are the
/// first sample after a minute's warm-up, the highest, the last, and the slope of a least-squares
/// line through the samples after warm-up.
pub fn soak(tracer: &Path, minutes: u64, rate: u64) -> Result<String> {
    let ns = Netns::new()?;
    undo_on_signal(&ns, &BpfStats(None));
    let t = start_tracer(Config::Watch, tracer, None)?.context("tracer")?;
    let pid = t.child.id();
    let secs = minutes * 60;
    let nspath = ns.path();
    let load = std::thread::spawn(move || churn(&nspath, 2, secs, Some(rate)));
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(10));
        let rss = rss_kib(pid).context("tracer exited during the soak")?;
        samples.push((started.elapsed().as_secs_f64(), rss));
        eprintln!(
            "xtask: soak {:>5.0} s  tracer RSS {} KiB",
            started.elapsed().as_secs_f64(),
            rss
        );
    }
    let made = load.join().map_err(|_| anyhow!("load thread panicked"))??;
    let err = stop_tracer(t);
    let (events, lost) = parse_summary(&err);
    let warm: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= 60.0)
        .collect();
    let n = warm.len().max(1) as f64;
    let (mx, my) = (
        warm.iter().map(|(t, _)| t).sum::<f64>() / n,
        warm.iter().map(|(_, r)| *r as f64).sum::<f64>() / n,
    );
    let cov: f64 = warm.iter().map(|(t, r)| (t - mx) * (*r as f64 - my)).sum();
    let var: f64 = warm.iter().map(|(t, _)| (t - mx).powi(2)).sum();
    let slope_kib_per_h = if var > 0.0 { cov / var * 3600.0 } else { 0.0 };
    Ok(format!(
        "Soak: tcptrace watch, {minutes} min at {rate} connections/s ({made} connections, {:.0}/s achieved), {events} state changes and events, {} lost.\nTracer RSS after 1 min {} KiB, highest {} KiB, last {} KiB; trend {:+.0} KiB/hour (least squares over {} samples).",
        made as f64 / secs as f64,
        lost.map_or("?".into(), |l| l.to_string()),
        warm.first().map_or(0, |s| s.1),
        samples.iter().map(|s| s.1).max().unwrap_or(0),
        samples.last().map_or(0, |s| s.1),
        slope_kib_per_h,
        warm.len()
    ))
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf is always safe to call.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// CPU seconds (user + system) used by this process: the load threads, and the kernel work
/// done in their context (loopback softirqs, the tracer's BPF programs).
fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    None,
    Watch,
    WatchCompare,
    WatchSockOps,
    WatchStream,
    EventsJson,
    EventsJsonCompare,
    Bpftrace,
}

impl Config {
    /// The name `--only` takes.
    fn key(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Watch => "watch",
            Config::WatchCompare => "watch-compare",
            Config::WatchSockOps => "watch-sockops",
            Config::WatchStream => "watch-stream",
            Config::EventsJson => "events-json",
            Config::EventsJsonCompare => "events-json-compare",
            Config::Bpftrace => "bpftrace",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Config::None => "no tracer",
            Config::Watch => "tcptrace watch (in-kernel aggregation)",
            Config::WatchCompare => "--compare binary: watch",
            Config::WatchSockOps => "tcptrace watch --passive-method sock-ops",
            Config::WatchStream => "tcptrace watch --aggregate user",
            Config::EventsJson => "tcptrace events --json > /dev/null",
            Config::EventsJsonCompare => "--compare binary: events --json > /dev/null",
            Config::Bpftrace => "bpftrace, in-kernel dwell histograms by socket",
        }
    }
}

struct Tracer {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// The tracers running now, for [`undo_on_signal`] to stop.
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// Stops a tracer as Ctrl-C would (its summary line comes out) and returns its stderr.
fn stop_tracer(mut t: Tracer) -> String {
    let pid = t.child.id();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = t.child.wait();
    if let Ok(mut r) = RUNNING.lock() {
        r.retain(|&p| p != pid);
    }
    t.stderr.join().unwrap_or_default()
}

/// The signal that interrupted the run, 0 until one does.
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn interrupted(sig: libc::c_int) {
    INTERRUPTED.store(sig, std::sync::atomic::Ordering::Relaxed);
}

/// Ctrl-C or SIGTERM in the middle of a run: a signal's default action skips `Drop`, which left
/// the load's namespace behind and `kernel.bpf_stats_enabled` on (two clock reads added to every
/// BPF program run on the host). The signals are caught instead (children start with the
/// default action again) and a thread of its own undoes the run: the tracers are stopped, the
/// namespace removed, bpf_stats restored. (Blocking the signals for `sigwait` would have been
/// inherited by the tracers, which then could not be stopped.)
fn undo_on_signal(ns: &Netns, stats: &BpfStats) {
    let name = ns.name.clone();
    let stats_before = stats.0.clone();
    let handler: extern "C" fn(libc::c_int) = interrupted;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
    std::thread::spawn(move || {
        let sig = loop {
            std::thread::sleep(Duration::from_millis(100));
            let sig = INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed);
            if sig != 0 {
                break sig;
            }
        };
        eprintln!("xtask: bench interrupted: stopping the tracers, removing namespace {name}");
        for pid in RUNNING.lock().map(|r| r.clone()).unwrap_or_default() {
            // SAFETY: signalling our own children.
            unsafe { libc::kill(pid as i32, libc::SIGINT) };
        }
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        if let Some(b) = stats_before {
            let _ = std::fs::write(BpfStats::PATH, b.trim());
        }
        std::process::exit(128 + sig);
    });
}

fn start_tracer(cfg: Config, tracer: &Path, compare: Option<&Path>) -> Result<Option<Tracer>> {
    let mut cmd = match cfg {
        Config::None => return Ok(None),
        Config::Watch => {
            let mut c = Command::new(tracer);
            c.args(["watch", "--interval", "1s"]);
            c
        }
        Config::WatchCompare => {
            let mut c = Command::new(compare.context("no --compare binary")?);
            c.args(["watch", "--interval", "1s"]);
            c
        }
        Config::WatchSockOps => {
            let mut c = Command::new(tracer);
            c.args(["watch", "--interval", "1s", "--passive-method", "sock-ops"]);
            c
        }
        Config::WatchStream => {
            let mut c = Command::new(tracer);
            c.args(["watch", "--interval", "1s", "--aggregate", "user"]);
            c
        }
        Config::EventsJson => {
            let mut c = Command::new(tracer);
            c.args(["events", "--json"]);
            c
        }
        Config::EventsJsonCompare => {
            let mut c = Command::new(compare.context("no --compare binary")?);
            c.args(["events", "--json"]);
            c
        }
        Config::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_DWELL]);
            c
        }
    };
    // bpftrace says "Attaching N probes..." on stdout; tcptrace says "attached" on stderr.
    let bpftrace = cfg == Config::Bpftrace;
    let mut child = cmd
        .stdout(if bpftrace {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if bpftrace {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", cfg.name()))?;
    if let Ok(mut r) = RUNNING.lock() {
        r.push(child.id());
    }
    let stderr: Box<dyn Read + Send> = if bpftrace {
        Box::new(child.stdout.take().context("bpftrace stdout")?)
    } else {
        Box::new(child.stderr.take().context("tracer stderr")?)
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut r = BufReader::new(stderr);
        let mut line = String::new();
        let mut told = false;
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if !told && (line.contains("attached") || line.contains("Attaching")) {
                let _ = ready_tx.send(());
                told = true;
            }
            all.push_str(&line);
            line.clear();
        }
        let _ = r.read_to_string(&mut all);
        all
    });
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        if let Ok(mut r) = RUNNING.lock() {
            r.retain(|&p| p != child.id());
        }
        let err = reader.join().unwrap_or_default();
        bail!("{} did not start: {}", cfg.name(), err.trim());
    }
    // bpftrace prints "Attaching" before it is attached; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    Ok(Some(Tracer {
        child,
        stderr: reader,
    }))
}

#[derive(Clone, Debug, Default)]
struct Sample {
    rate: f64,
    connections: u64,
    tracer_cpu: f64,
    /// CPU of the load generator plus the tracer during the load, % of one core.
    machine_cpu: f64,
    events: u64,
    lost: Option<u64>,
    /// With --bpf-stats: (program, runs, run time ns) for each of the tracer's programs.
    progs: Vec<(String, u64, u64)>,
    /// Seconds of load.
    secs: f64,
}

impl Sample {
    /// With --bpf-stats: CPU its BPF programs took during the load, % of one core.
    fn bpf_cpu(&self) -> f64 {
        let ns: u64 = self.progs.iter().map(|p| p.2).sum();
        ns as f64 / 1e9 / self.secs.max(1e-9) * 100.0
    }
}

/// `tcptrace: N events received, ..., L lost (ring buffer full or skipped by the kernel), ...`
fn parse_summary(stderr: &str) -> (u64, Option<u64>) {
    let Some(line) = stderr.lines().rev().find(|l| l.contains("events received")) else {
        return (0, None);
    };
    let num_before = |word: &str| -> Option<u64> {
        let i = line.find(word)?;
        line[..i]
            .split_whitespace()
            .last()?
            .trim_end_matches(',')
            .parse()
            .ok()
    };
    // In-kernel aggregation measures state changes without sending them as events.
    let in_kernel = num_before("state changes measured in the kernel").unwrap_or(0);
    (
        num_before("events received").unwrap_or(0) + in_kernel,
        num_before("lost"),
    )
}

/// One run of the load under `cfg`; with `stats` (bpf_stats is on), also the tracer's programs'
/// run counts and times.
fn measure(
    cfg: Config,
    ns: &Path,
    o: &BenchOptions,
    rate: Option<u64>,
    stats: bool,
) -> Result<Sample> {
    let tracer = start_tracer(cfg, &o.tracer, o.compare.as_deref())?;
    let pid = tracer.as_ref().map(|t| t.child.id());
    // Only the load window counts: not the tracer's start-up (BTF, verifier) nor its exit.
    let cpu0 = pid.and_then(cpu_seconds).unwrap_or(0.0);
    let load0 = self_cpu_seconds();
    let t0 = Instant::now();
    let n = churn(ns, o.threads, o.seconds, rate)?;
    let secs = t0.elapsed().as_secs_f64();
    let load1 = self_cpu_seconds();
    let cpu1 = pid.and_then(cpu_seconds).unwrap_or(0.0);
    let tracer_cpu = (cpu1 - cpu0) / secs * 100.0;
    let mut s = Sample {
        rate: n as f64 / secs,
        connections: n,
        tracer_cpu,
        machine_cpu: (load1 - load0) / secs * 100.0 + tracer_cpu,
        progs: match pid {
            Some(pid) if stats => prog_stats(pid),
            _ => Vec::new(),
        },
        secs,
        ..Sample::default()
    };
    if let Some(t) = tracer {
        let err = stop_tracer(t);
        if cfg != Config::Bpftrace {
            let (events, lost) = parse_summary(&err);
            s.events = events;
            s.lost = lost;
        }
    }
    Ok(s)
}

/// Run counts and run times of the BPF programs `pid` holds open (its fdinfo), named by bpftool.
/// Counted only while kernel.bpf_stats_enabled is on.
fn prog_stats(pid: u32) -> Vec<(String, u64, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
        };
        let (Some(id), Some(cnt), Some(ns)) =
            (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
        else {
            continue;
        };
        // "ID: TYPE  name NAME  tag ..."
        let name = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .ok()
            .and_then(|o| {
                let t = String::from_utf8_lossy(&o.stdout).into_owned();
                let w: Vec<&str> = t.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "name")?;
                w.get(i + 1).map(|n| n.to_string())
            })
            .unwrap_or_else(|| format!("id {id}"));
        if !out.iter().any(|(n, _, _)| *n == name) {
            out.push((name, cnt, ns));
        }
    }
    out
}

/// `kernel.bpf_stats_enabled`, remembered to be restored on drop. The kernel counts program run
/// time only while it is on, and that costs every program run two clock reads and a counter
/// update, ten times per connection. So rounds that measure throughput or CPU always run with
/// it off, and the per-program figures come from rounds of their own.
struct BpfStats(Option<String>);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    /// `needed`: --bpf-stats was asked for, so a kernel without the setting is an error.
    fn new(needed: bool) -> Result<BpfStats> {
        match std::fs::read_to_string(Self::PATH) {
            Ok(before) => Ok(BpfStats(Some(before))),
            Err(_) if !needed => Ok(BpfStats(None)),
            Err(e) => Err(e).with_context(|| format!("reading {}", Self::PATH)),
        }
    }

    fn set(&self, on: bool) -> Result<()> {
        let Some(before) = &self.0 else {
            return Ok(());
        };
        let want = if on { "1" } else { "0" };
        let now = std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| before.clone());
        if now.trim() == want {
            return Ok(());
        }
        std::fs::write(Self::PATH, want).with_context(|| {
            format!("writing {want} to {} (the bench runs as root)", Self::PATH)
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = std::fs::write(Self::PATH, before.trim());
        }
    }
}

/// Rounds per configuration with bpf_stats on, for the per-program figures (they vary less
/// than throughput does).
const STATS_ROUNDS: usize = 2;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The order of `n` configurations in round `round`: turned by one each round, so no
/// configuration always runs in the same place (in a fixed order, two runs of nearly the same
/// programs differed by 3-5 points, the first after the no-tracer run the worse); pairs stay
/// within one round.
fn turning(n: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |k| (k + round) % n)
}

pub fn overhead(o: &BenchOptions) -> Result<String> {
    let ns = Netns::new()?;
    let stats = BpfStats::new(o.bpf_stats)?;
    undo_on_signal(&ns, &stats);
    // Throughput is measured without bpf_stats' own cost (see `BpfStats`).
    stats.set(false)?;
    let mut configs = vec![Config::None, Config::Watch];
    if o.compare.is_some() {
        configs.push(Config::WatchCompare);
    }
    configs.extend([
        Config::WatchSockOps,
        Config::WatchStream,
        Config::EventsJson,
    ]);
    if o.compare.is_some() {
        configs.push(Config::EventsJsonCompare);
    }
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have_bpftrace {
        configs.push(Config::Bpftrace);
    }
    for k in &o.only {
        if !configs.iter().any(|c| c.key() == k) {
            bail!(
                "--only {k}: no such configuration here; choose from {}",
                configs
                    .iter()
                    .map(|c| c.key())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if !o.only.is_empty() {
        configs.retain(|c| *c == Config::None || o.only.iter().any(|k| k == c.key()));
    }
    // Warm-up: the first churn after creating a namespace is slower.
    churn(&ns.path(), o.threads, 2, None)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
    for round in 0..o.rounds {
        for i in turning(configs.len(), round) {
            let cfg = &configs[i];
            let s = measure(*cfg, &ns.path(), o, None, false)?;
            eprintln!(
                "xtask: bench round {} {:<45} {:>9.0} conn/s  tracer cpu {:>5.1}%  events {}  lost {}",
                round + 1,
                cfg.name(),
                s.rate,
                s.tracer_cpu,
                s.events,
                s.lost.map_or("-".into(), |l| l.to_string())
            );
            samples[i].push(s);
        }
    }
    let mut out = format!(
        "Overhead on a loopback connection churn ({} threads in lockstep, {} rounds x {} s, interleaved; overhead = 1 - rate / same round's no-tracer rate):\n\n| configuration | connections/s median (min-max) | overhead median (min-max) | tracer CPU % | events/s | lost events |\n|---|---|---|---|---|---|\n",
        o.threads, o.rounds, o.seconds
    );
    let base: Vec<f64> = samples[0].iter().map(|s| s.rate).collect();
    for (i, cfg) in configs.iter().enumerate() {
        let rates: Vec<f64> = samples[i].iter().map(|s| s.rate).collect();
        let mut r = rates.clone();
        let (lo, hi) = (
            rates.iter().cloned().fold(f64::MAX, f64::min),
            rates.iter().cloned().fold(0.0, f64::max),
        );
        let mut ov: Vec<f64> = rates
            .iter()
            .zip(&base)
            .map(|(r, b)| (1.0 - r / b) * 100.0)
            .collect();
        let (olo, ohi) = (
            ov.iter().cloned().fold(f64::MAX, f64::min),
            ov.iter().cloned().fold(f64::MIN, f64::max),
        );
        let mut cpu: Vec<f64> = samples[i].iter().map(|s| s.tracer_cpu).collect();
        let mut evs: Vec<f64> = samples[i]
            .iter()
            .map(|s| s.events as f64 / o.seconds as f64)
            .collect();
        let lost: Option<u64> = samples[i].iter().map(|s| s.lost).sum();
        let events_seen: u64 = samples[i].iter().map(|s| s.events).sum();
        out.push_str(&format!(
            "| {} | {:.0} ({:.0}-{:.0}) | {} | {} | {} | {} |\n",
            cfg.name(),
            median(&mut r),
            lo,
            hi,
            if *cfg == Config::None {
                "-".to_string()
            } else {
                format!("{:.1} % ({:.1}-{:.1})", median(&mut ov), olo, ohi)
            },
            if *cfg == Config::None {
                "-".to_string()
            } else {
                format!("{:.1}", median(&mut cpu))
            },
            if events_seen > 0 {
                format!("{:.0}", median(&mut evs))
            } else {
                "-".into()
            },
            lost.map_or("(not reported)".to_string(), |l| {
                if events_seen > 0 {
                    format!("{l} ({:.3} %)", l as f64 / (events_seen + l) as f64 * 100.0)
                } else {
                    l.to_string()
                }
            }),
        ));
    }
    if o.bpf_stats {
        // Rounds of their own with bpf_stats on: the throughput rounds above ran without it.
        stats.set(true)?;
        let mut timed: Vec<Vec<Sample>> = vec![Vec::new(); configs.len()];
        for round in 0..STATS_ROUNDS {
            for i in turning(configs.len(), round) {
                timed[i].push(measure(configs[i], &ns.path(), o, None, true)?);
            }
        }
        stats.set(false)?;
        out.push_str(&format!(
            "\nBPF programs ({STATS_ROUNDS} more rounds with kernel.bpf_stats_enabled on, which itself adds two clock reads per run, included in the times; medians; the throughput rounds above ran with it off):\n\n| configuration | program | runs per connection | ns per run | ns per connection | overhead in these rounds |\n|---|---|---|---|---|---|\n",
        ));
        let timed_base: Vec<f64> = timed[0].iter().map(|s| s.rate).collect();
        for (i, cfg) in configs.iter().enumerate() {
            let mut ov: Vec<f64> = timed[i]
                .iter()
                .zip(&timed_base)
                .map(|(s, b)| (1.0 - s.rate / b) * 100.0)
                .collect();
            let ov = median(&mut ov);
            let mut names: Vec<&str> = timed[i]
                .iter()
                .flat_map(|s| s.progs.iter().map(|p| p.0.as_str()))
                .collect();
            names.sort_unstable();
            names.dedup();
            for (k, name) in names.into_iter().enumerate() {
                let per = |f: &dyn Fn(&Sample, u64, u64) -> f64| -> f64 {
                    let mut v: Vec<f64> = timed[i]
                        .iter()
                        .filter_map(|s| {
                            let p = s.progs.iter().find(|p| p.0 == name)?;
                            Some(f(s, p.1, p.2))
                        })
                        .collect();
                    median(&mut v)
                };
                let runs = per(&|s, cnt, _| cnt as f64 / s.connections.max(1) as f64);
                let ns_run = per(&|_, cnt, ns| ns as f64 / cnt.max(1) as f64);
                let ns_conn = per(&|s, _, ns| ns as f64 / s.connections.max(1) as f64);
                out.push_str(&format!(
                    "| {} | {name} | {runs:.2} | {ns_run:.0} | {ns_conn:.0} | {} |\n",
                    cfg.name(),
                    if k == 0 {
                        format!("{ov:.1} %")
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    if o.fixed_rate > 0 {
        // With --bpf-stats: two more columns.
        let (intro, head, rule) = if o.bpf_stats {
            (
                "; with --bpf-stats also the CPU the tracer's BPF programs took (their run time, from rounds of their own with bpf_stats on, its clock reads included) and what the tracer's own work adds up to, BPF plus its process, without the noise of the load's own CPU",
                " BPF CPU % | accounted: BPF + tracer, % of the machine |",
                "---|---|",
            )
        } else {
            ("", "", "")
        };
        out.push_str(&format!(
            "\nAt a fixed {} connections/s: CPU of the load generator (with the kernel work in its context, BPF programs included) plus the tracer, % of one core, paired with the same round's no-tracer run{intro}:\n\n| configuration | connections/s | load + tracer CPU % median | extra vs none (% of the 2-core machine) | tracer CPU % | lost events |{head}\n|---|---|---|---|---|---|{rule}\n",
            o.fixed_rate,
        ));
        let fixed_cfgs: Vec<Config> = [
            Config::None,
            Config::Watch,
            Config::WatchCompare,
            Config::WatchSockOps,
            Config::EventsJson,
            Config::EventsJsonCompare,
        ]
        .into_iter()
        .filter(|c| configs.contains(c))
        .collect();
        let mut busy: Vec<Vec<(f64, Sample)>> = vec![Vec::new(); fixed_cfgs.len()];
        for round in 0..o.rounds.min(3) {
            for i in turning(fixed_cfgs.len(), round) {
                let cfg = &fixed_cfgs[i];
                let s = measure(*cfg, &ns.path(), o, Some(o.fixed_rate), false)?;
                busy[i].push((s.machine_cpu, s));
            }
        }
        // The BPF programs' CPU at this rate, from rounds with bpf_stats on (see `BpfStats`).
        let mut bpf_cpu: Vec<Vec<f64>> = vec![Vec::new(); fixed_cfgs.len()];
        if o.bpf_stats {
            stats.set(true)?;
            for round in 0..STATS_ROUNDS {
                for i in turning(fixed_cfgs.len(), round) {
                    if fixed_cfgs[i] != Config::None {
                        let s = measure(fixed_cfgs[i], &ns.path(), o, Some(o.fixed_rate), true)?;
                        bpf_cpu[i].push(s.bpf_cpu());
                    }
                }
            }
            stats.set(false)?;
        }
        let base: Vec<f64> = busy[0].iter().map(|(p, _)| *p).collect();
        for (i, cfg) in fixed_cfgs.iter().enumerate() {
            let mut p: Vec<f64> = busy[i].iter().map(|(p, _)| *p).collect();
            let mut extra: Vec<f64> = busy[i]
                .iter()
                .zip(&base)
                .map(|((p, _), b)| (p - b) / 2.0)
                .collect();
            let mut cpu: Vec<f64> = busy[i].iter().map(|(_, s)| s.tracer_cpu).collect();
            let tracer = median(&mut cpu);
            let lost: Option<u64> = busy[i].iter().map(|(_, s)| s.lost).sum();
            let mut r: Vec<f64> = busy[i].iter().map(|(_, s)| s.rate).collect();
            let accounted = if !o.bpf_stats {
                String::new()
            } else if *cfg == Config::None {
                " - | - |".into()
            } else {
                let bpf = median(&mut bpf_cpu[i]);
                format!(" {bpf:.2} | {:.2} % |", (bpf + tracer) / 2.0)
            };
            out.push_str(&format!(
                "| {} | {:.0} | {:.1} | {} | {} | {} |{accounted}\n",
                cfg.name(),
                median(&mut r),
                median(&mut p),
                if *cfg == Config::None {
                    "-".into()
                } else {
                    format!("{:+.2} %", median(&mut extra))
                },
                if *cfg == Config::None {
                    "-".into()
                } else {
                    format!("{tracer:.1}")
                },
                lost.map_or("-".to_string(), |l| l.to_string()),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configuration_takes_every_place() {
        let n = 4;
        let rounds: Vec<Vec<usize>> = (0..n).map(|r| turning(n, r).collect()).collect();
        assert_eq!(rounds[0], [0, 1, 2, 3]);
        assert_eq!(rounds[1], [1, 2, 3, 0]);
        for cfg in 0..n {
            let mut places: Vec<usize> = rounds
                .iter()
                .map(|r| r.iter().position(|&c| c == cfg).unwrap())
                .collect();
            places.sort();
            assert_eq!(places, [0, 1, 2, 3], "configuration {cfg}");
        }
    }

    #[test]
    fn reads_the_tracer_summary() {
        let err = "tcptrace: attached 6 programs\ntcptrace: 1234 events received, 5 lost (ring buffer full or skipped by the kernel), 0 undecodable, 0 sockets evicted, 10.0s\n";
        assert_eq!(parse_summary(err), (1234, Some(5)));
        let err = "tcptrace: 99 events received, 99 shown, 0 lost (ring buffer full or skipped by the kernel), 0 undecodable";
        assert_eq!(parse_summary(err), (99, Some(0)));
        let err = "tcptrace: 7 events received, 1000 state changes measured in the kernel, 0 lost (ring buffer full or skipped by the kernel), 0 undecodable";
        assert_eq!(parse_summary(err), (1007, Some(0)));
        assert_eq!(parse_summary("nothing"), (0, None));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
