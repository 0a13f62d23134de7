//! Command line: what every mode shares (filters, duration, kernel options) and the modes.
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Watch every TCP connection through the kernel's tracepoints and say what is wrong.";

const LONG_ABOUT: &str = "\
Watch every TCP connection on this host through the kernel's own tracepoints
(sock/inet_sock_set_state and the tcp retransmit/reset tracepoints) and report
what happens to it: state changes with the time spent in each state,
retransmits, and resets.

Needs root (or CAP_BPF + CAP_PERFMON), a kernel with BTF (/sys/kernel/btf/vmlinux)
and BPF ring buffers (Linux >= 5.8). No kprobes, no kernel headers.

Examples:
  tcptrace events                      every event, one line each
  tcptrace events --json -p 443        JSON lines for port 443 only
  tcptrace events --netns /var/run/netns/blue --duration 30s";

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
}

#[derive(Debug, Args, Default)]
pub struct EventsArgs {
    /// Write JSON lines (one object per event; field names in the README) instead of text.
    #[arg(long)]
    pub json: bool,
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

    /// Kernel ring buffer size (power of two: 4K .. 1G; suffixes K, M, G). Raise it if events
    /// are reported lost.
    #[arg(long, value_name = "BYTES", default_value = "16M", value_parser = parse_size, global = true)]
    pub ring_size: u32,

    /// Most sockets tracked at once; past it the least recently active are evicted (counted).
    #[arg(long, value_name = "N", default_value_t = crate::lifecycle::Table::DEFAULT_CAP, global = true)]
    pub max_sockets: usize,

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
        return Err(format!("`{s}` must be a power of two of at least 4K (e.g. 16M)"));
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
