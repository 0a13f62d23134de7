//! Command line: what every mode shares (filters, duration, kernel options) and the modes.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

const ABOUT: &str =
    "Watch every TCP connection through the kernel's tracepoints and say what is wrong.";

const LONG_ABOUT: &str = "\
Watch every TCP connection on this host through the kernel's own tracepoints
(sock/inet_sock_set_state and the tcp retransmit/reset tracepoints) and report
what happens to it: state changes with the time spent in each state,
retransmits, and resets.

Needs root (or CAP_BPF + CAP_PERFMON), a kernel with BTF (/sys/kernel/btf/vmlinux)
and BPF ring buffers (Linux >= 5.8). No kprobes, no kernel headers.

Examples:
  tcptrace                             the live view (same as `tcptrace watch`)
  tcptrace events                      every event, one line each
  tcptrace events --json -p 443        JSON lines for port 443 only
  tcptrace watch --duration 1m --json-summary run.json --hdr-log run.hlog
  tcptrace watch --record run.tcpt     ... later: tcptrace replay run.tcpt
  tcptrace report host1.hlog host2.hlog --from 5m --to 10m";

#[derive(Debug, Parser)]
#[command(name = "tcptrace", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream every TCP event, one line each (like bcc's tcpstates, plus retransmits and resets).
    ///
    /// Columns: time (UTC), kernel socket address, pid and comm of the task on the CPU (for
    /// transitions driven by incoming packets that is often swapper or another process: the
    /// socket's owner, when known, is in the JSON), local and remote address, the time the socket
    /// spent in its previous state (blank if tcptrace had not seen it enter that state), and
    /// the event.
    Events(EventsArgs),

    /// Live view: handshake latency (both sides), time spent in each TCP state, connection and
    /// retransmit rates, lost and evicted counts; refreshed every --interval.
    Watch,

    /// Run the aggregator over a recording made with --record, with all the same outputs
    /// (--json-summary, --hdr-log, filters); prints the final view.
    Replay(ReplayArgs),

    /// Merge histogram logs written by --hdr-log (e.g. from many hosts) by metric over a time
    /// range and print percentile tables.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The recording.
    pub file: PathBuf,
    /// Print every event (as `tcptrace events` would) instead of the final view.
    #[arg(long)]
    pub events: bool,
    /// With --events: JSON lines.
    #[arg(long, requires = "events")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Histogram logs to merge.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Start of the range: an offset from each log's start (30s, 5m) or a time (RFC 3339).
    #[arg(long, value_parser = crate::report::parse_bound)]
    pub from: Option<crate::report::Bound>,
    /// End of the range, same forms as --from.
    #[arg(long, value_parser = crate::report::parse_bound)]
    pub to: Option<crate::report::Bound>,
    /// Only metrics whose tag contains this text (e.g. `handshake`, `dwell.CLOSE_WAIT`, `port.443`).
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Debug, Args, Default)]
pub struct EventsArgs {
    /// Write JSON lines (one object per event; field names in the README) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Aggregate {
    #[default]
    Auto,
    Kernel,
    User,
}

/// Options every mode understands. They may come before or after the mode.
#[derive(Debug, Args, Default)]
pub struct CommonArgs {
    /// Keep events whose local or remote port is PORT (repeat for several).
    #[arg(short = 'p', long = "port", value_name = "PORT", global = true)]
    pub ports: Vec<u16>,

    /// Keep events of process PID: run by it, or on a socket it owns (connect(), listen() or
    /// close() seen in its context).
    #[arg(long, value_name = "PID", global = true)]
    pub pid: Option<u32>,

    /// Keep events in one network namespace: its inode number (as `ls -L -i /proc/PID/ns/net`
    /// shows), a path such as /var/run/netns/NAME or /proc/PID/ns/net, or a name under
    /// /var/run/netns.
    #[arg(long, value_name = "NETNS", global = true)]
    pub netns: Option<String>,

    /// IPv4 only (v4-mapped addresses on dual-stack sockets count as IPv4).
    #[arg(short = '4', long = "ipv4", global = true, conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// IPv6 only.
    #[arg(short = '6', long = "ipv6", global = true)]
    pub ipv6: bool,

    /// Stop after this long (e.g. 10s, 5m, 1h30m) and exit 0. Default: until Ctrl-C/SIGTERM.
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration, global = true)]
    pub duration: Option<Duration>,

    /// Kernel ring buffer memory in all (power of two: 4K .. 1G; suffixes K, M, G), split evenly
    /// among the per-CPU rings (one per CPU up to 8, shared beyond). Raise it if events are
    /// reported lost.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_size, global = true)]
    pub ring_size: u32,

    /// Most sockets tracked at once; past it the least recently active are evicted (counted).
    #[arg(long, value_name = "N", default_value_t = crate::lifecycle::Table::DEFAULT_CAP, global = true)]
    pub max_sockets: usize,

    /// Refresh period of the live view, and interval length of --hdr-log.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, global = true)]
    pub interval: Duration,

    /// At exit, write every figure of the run as JSON to FILE (atomically). Any mode.
    #[arg(long, value_name = "FILE", global = true)]
    pub json_summary: Option<PathBuf>,

    /// Write every histogram as an HdrHistogram interval log to FILE (one interval per
    /// --interval), plus percentile distributions in FILE.hgrm at exit. Any mode.
    #[arg(long, value_name = "FILE", global = true)]
    pub hdr_log: Option<PathBuf>,

    /// Save the raw event stream to FILE, for `tcptrace replay`.
    #[arg(long, value_name = "FILE", global = true)]
    pub record: Option<PathBuf>,

    /// How to measure server-side handshakes: sock-ops (SYN arrival to ESTABLISHED, through a
    /// sock_ops program on the cgroup v2 root; also the accept and SYN queue lengths at each SYN;
    /// costs ~45 % more kernel time per connection), srtt (what the kernel notes in the
    /// accepted socket: the first SYN-ACK's round trip, or the time since it when SYN-ACKs were
    /// retransmitted; with in-kernel aggregation also the accept queue as each handshake
    /// completes), or auto (srtt with in-kernel aggregation; sock-ops, else srtt, when streaming).
    #[arg(long, value_enum, default_value_t = crate::source::kernel::PassiveChoice::Auto, global = true)]
    pub passive_method: crate::source::kernel::PassiveChoice,

    /// How streaming mode (`events`, --aggregate user, --record) hooks TCP state changes: btf (a
    /// tp_btf program reading the socket itself: no tracepoint record built and copied per
    /// event, and never skipped because another BPF program is running on that CPU), tracepoint
    /// (the classic sock/inet_sock_set_state tracepoint, what older tools use), or auto (btf,
    /// else tracepoint with a note).
    #[arg(long, value_enum, default_value_t = crate::source::kernel::StateHook::Auto, global = true)]
    pub state_hook: crate::source::kernel::StateHook,

    /// Where measurements are made. kernel: routine state changes are measured inside the
    /// kernel (per-socket timestamps, per-CPU histograms read every second); only retransmits and
    /// resets cross to userspace, so nothing is lost to a slow reader and userspace does almost
    /// nothing; values are bucketed (within 1.6 %). user: every event streams to userspace (exact values; what `events`, --record and
    /// --pid need). auto: kernel for `watch` unless --record, --pid or more than 8 --port
    /// values ask for streaming, or this kernel cannot (then user, with a note).
    #[arg(long, value_enum, default_value_t = Aggregate::Auto, global = true)]
    pub aggregate: Aggregate,

    /// Most ports broken out per port (by local port for accepted sockets, by remote port for
    /// active handshakes); further ports are counted, not broken out.
    #[arg(long, value_name = "N", default_value_t = 64, global = true)]
    pub max_ports: usize,

    /// A socket in CLOSE_WAIT longer than this is reported as leaked: the peer closed and the
    /// application never called close(). Reported within a sixth of this after crossing it
    /// (CLOSE_WAIT sockets are looked for as seldom as that allows; see --poll-interval).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration, global = true)]
    pub close_wait_threshold: Duration,

    /// How often to take a sock_diag snapshot in each namespace of interest: listeners' accept
    /// queues and drops and the kernel counters every time; CLOSE_WAIT and FIN_WAIT2 sockets
    /// every time up to every 5th (as --close-wait-threshold allows: finding them walks every
    /// connection on the host); the TIME_WAIT count every time, the sockets themselves (for
    /// their breakdown by remote end) every 15th, and at once when the count nears port
    /// exhaustion.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, global = true)]
    pub poll_interval: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (refreshed every --interval). Given
    /// without a value: 127.0.0.1:9923. Off by default.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9923", global = true)]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// After attaching, switch to this user with no capabilities (the ring buffer keeps
    /// working). sock_diag polls of other namespaces and owners of other users' sockets then
    /// stop working (a warning says so).
    #[arg(long, value_name = "NAME", global = true)]
    pub user: Option<String>,

    /// Print the kernel programs' aya-log debug lines to stderr (slow; for debugging tcptrace).
    #[arg(long, global = true, hide_short_help = true)]
    pub debug_bpf: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (examples: 500ms, 10s, 5m, 1h30m)"))?;
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// `16M`, `4096`, `1G`: bytes, with binary suffixes.
pub fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (examples: 4096, 256K, 16M, 1G)"))?;
    let bytes = n
        .checked_mul(mult)
        .filter(|&b| b <= 1 << 30)
        .ok_or_else(|| format!("`{s}` is larger than 1G"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!(
            "`{s}` must be a power of two of at least 4K (e.g. 16M)"
        ));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256k"), Ok(256 << 10));
        assert!(parse_size("3M").is_err());
        assert!(parse_size("2G").is_err());
        assert!(parse_size("abc").is_err());
        assert!(parse_size("1K").is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let c = Cli::try_parse_from(["tcptrace", "-p", "80", "-p", "443", "events", "-4"]).unwrap();
        assert_eq!(c.common.ports, vec![80, 443]);
        assert!(c.common.ipv4);
        let c = Cli::try_parse_from(["tcptrace", "events", "-p", "80", "--port", "443"]).unwrap();
        assert_eq!(c.common.ports, vec![80, 443]);
        assert!(Cli::try_parse_from(["tcptrace", "-4", "-6"]).is_err());
        assert!(Cli::try_parse_from(["tcptrace", "events", "--duration", "soon"]).is_err());
        let c = Cli::try_parse_from(["tcptrace", "events", "--duration", "1m30s"]).unwrap();
        assert_eq!(c.common.duration, Some(Duration::from_secs(90)));
    }
}
