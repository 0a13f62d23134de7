//! `tcptrace watch`: the live view. Redrawn every `--interval` on a terminal; plain periodic text
//! blocks when stdout is not one (logs, pipes). Fits 80 columns.
use std::fmt::Write as _;

use crate::{
    aggregate::Aggregator,
    diagnose::Health,
    hist::{Hist, percentile_columns},
    sink::summary::SourceTotals,
};

/// Rates are computed between two consecutive renders.
#[derive(Clone, Copy, Debug, Default)]
pub struct Previous {
    opens: u64,
    closed: u64,
    retransmits: u64,
    secs: f64,
}

fn row(out: &mut String, name: &str, h: &Hist) {
    let _ = writeln!(out, "  {:<18} {}", name, percentile_columns(h));
}

/// Renders one frame. `elapsed_s` is the time since tracing started.
pub fn render(
    agg: &Aggregator,
    health: &Health,
    now_ns: u64,
    totals: &SourceTotals,
    elapsed_s: f64,
    prev: &mut Previous,
    passive_note: Option<&str>,
) -> String {
    let mut out = String::new();
    let t = agg.table_stats();
    let opens = agg.active_opens + agg.passive_opens;
    let dt = (elapsed_s - prev.secs).max(1e-3);
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
    match &agg.in_kernel {
        Some(k) => {
            let _ = writeln!(
                out,
                "tcptrace watch  {:.0}s  in-kernel {}  events {}  lost {}  undecodable {}",
                elapsed_s, k.transitions, totals.received, totals.lost, totals.undecodable
            );
        }
        None => {
            let _ = writeln!(
                out,
                "tcptrace watch  {:.0}s  events {}  lost {}  evicted {}  undecodable {}",
                elapsed_s, totals.received, totals.lost, t.evicted, totals.undecodable
            );
        }
    }
    let _ = write!(
        out,
        "connections/s  opened {:.1}  closed {:.1}",
        rate(opens, prev.opens),
        rate(agg.closed, prev.closed),
    );
    // In aggregation mode the kernel holds the per-socket table; userspace has none to count.
    if agg.in_kernel.is_none() {
        let _ = write!(out, "   tracked sockets {}", agg.tracked());
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "\n{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "HANDSHAKE", "COUNT", "P50", "P90", "P99", "P99.9", "MAX"
    );
    row(&mut out, "active", &agg.active);
    row(
        &mut out,
        match agg.config().passive_method {
            crate::aggregate::PassiveMethod::SockOps => "passive(sock_ops)",
            crate::aggregate::PassiveMethod::Srtt => "passive(srtt)",
        },
        &agg.passive,
    );
    if let Some(note) = passive_note {
        let _ = writeln!(out, "  ({note})");
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "TIME IN STATE", "COUNT", "P50", "P90", "P99", "P99.9", "MAX"
    );
    for (state, h) in agg.dwell.iter() {
        row(&mut out, state.name(), h);
    }
    row(&mut out, "(lifetime)", &agg.lifetime);
    let r = &agg.retransmits;
    let _ = writeln!(
        out,
        "\nRETRANSMITS/s {:.1}  syn {}  synack {}  data {}  fin {}",
        rate(r.total, prev.retransmits),
        r.syn,
        r.synack,
        r.data,
        r.fin
    );
    let sent: u64 = agg.resets_sent.values().sum();
    let received: u64 = agg.resets_received.values().sum();
    let _ = write!(out, "RESETS sent {sent}  received {received}");
    if let Some((state, n)) = agg.resets_received.iter().max_by_key(|(_, n)| **n) {
        let _ = write!(out, "  (most received in {state}: {n})");
    }
    out.push('\n');
    let listeners = health.listeners(&agg.synack_by_port);
    if !listeners.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<30} {:>6} {:>6} {:>6} {:>7}  OWNER",
            "LISTENER (accept queue)", "QUEUE", "PEAK", "LIMIT", "DROPS"
        );
        // Troubled listeners first, then the busiest.
        let mut ls: Vec<_> = listeners.iter().collect();
        ls.sort_by_key(|l| (l.diagnosis == "ok", std::cmp::Reverse(l.queue_peak)));
        for l in ls.iter().take(8) {
            let owner = match (&l.comm, l.pid) {
                (Some(c), Some(p)) => format!("{c}[{p}]"),
                _ => "-".into(),
            };
            let addr: String = format!("{}:{}", l.addr, l.port).chars().take(30).collect();
            let _ = writeln!(
                out,
                "{:<30} {:>6} {:>6} {:>6} {:>7}  {}",
                addr,
                l.queue_len,
                l.queue_peak,
                l.backlog_limit,
                l.drops,
                owner.chars().take(18).collect::<String>()
            );
        }
    }
    let leaks = health.leaks_by_process(now_ns);
    if !leaks.is_empty() {
        let total: usize = leaks.iter().map(|l| l.count).sum();
        let who: Vec<String> = leaks
            .iter()
            .take(3)
            .map(|l| {
                format!(
                    "{}[{}] {}{}",
                    l.comm.as_deref().unwrap_or("?"),
                    l.pid.map_or("?".into(), |p| p.to_string()),
                    l.count,
                    if l.growing { "+" } else { "" }
                )
            })
            .collect();
        let line = format!("CLOSE_WAIT LEAKS {total}: {}", who.join(", "));
        let _ = writeln!(out, "{}", line.chars().take(80).collect::<String>());
    }
    let tw = health.time_wait();
    let _ = writeln!(
        out,
        "TIME_WAIT {}  FIN_WAIT2 timeouts {}",
        tw.count, health.fin_wait2_timeouts
    );
    for w in &tw.port_exhaustion {
        let _ = writeln!(out, "WARNING: {}", w.chars().take(71).collect::<String>());
    }
    if let Some(k) = &agg.in_kernel {
        let unmeasured = k.sockets_untracked + k.sockets_evicted + k.syns_evicted + k.ports_full;
        if unmeasured > 0 {
            let _ = writeln!(
                out,
                "WARNING: in kernel: {} untracked, {} evicted, {} SYNs evicted, {} port-table full",
                k.sockets_untracked, k.sockets_evicted, k.syns_evicted, k.ports_full
            );
        }
    }
    if totals.lost > 0 {
        let _ = writeln!(
            out,
            "WARNING: {} events lost (ring buffer full, or skipped): raise --ring-size",
            totals.lost
        );
    }
    *prev = Previous {
        opens,
        closed: agg.closed,
        retransmits: r.total,
        secs: elapsed_s,
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregatorConfig;

    #[test]
    fn fits_80_columns() {
        let agg = Aggregator::new(AggregatorConfig::default());
        let mut prev = Previous::default();
        let frame = render(
            &agg,
            &Health::new(Default::default()),
            0,
            &SourceTotals {
                received: 123_456_789,
                lost: 5,
                undecodable: 0,
            },
            12.0,
            &mut prev,
            Some("sock_ops unavailable"),
        );
        for line in frame.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line}");
        }
        assert!(frame.contains("lost 5"));
        assert!(frame.contains("WARNING"));
    }
}
