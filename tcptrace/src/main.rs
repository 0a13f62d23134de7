//! `tcptrace`: the command-line front end. Errors are one line, naming the fix, exit 1.
use std::{
    io::{self, BufWriter, IsTerminal as _, Write as _},
    process::ExitCode,
};

use anyhow::bail;
use clap::Parser as _;
use tcptrace::{
    aggregate::{AggregatorConfig, PassiveMethod},
    cli::{Aggregate, Cli, Command, CommonArgs, EventsArgs, ReplayArgs, ReportArgs},
    diagnose::HealthConfig,
    filter::{Family, Filter, parse_netns},
    pipeline::{Outputs, Pipeline},
    privileges, report,
    run::{Flow, StopSignals, run_live},
    sink::{
        WallClock,
        events::{EventsSink, Format},
        monotonic_now_ns, prometheus,
        summary::Summary,
        watch,
    },
    source::{
        kernel::{KernelAggregation, KernelOptions, KernelSource},
        poller::{self, Poller, Targets},
        record::{Item, Replay},
    },
};
use tcptrace_common::{AF_INET, AF_INET6, MAX_KERNEL_PORTS};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.common.user.is_some() {
        // Before any thread exists, so every thread has it (--user drops the rest later).
        // SAFETY: plain prctl.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    }
    if cli.common.debug_bpf {
        env_logger::Builder::new()
            .filter_level(log::LevelFilter::Debug)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcptrace: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcptrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let common = &cli.common;
    match cli.command.unwrap_or(Command::Watch) {
        Command::Events(args) => live(common, Some(&args)).await,
        Command::Watch => live(common, None).await,
        Command::Replay(args) => replay(common, &args),
        Command::Report(args) => report_cmd(&args),
    }
}

fn filter_from(common: &CommonArgs) -> anyhow::Result<Filter> {
    Ok(Filter {
        ports: common.ports.clone(),
        pid: common.pid,
        netns: common.netns.as_deref().map(parse_netns).transpose()?,
        family: match (common.ipv4, common.ipv6) {
            (true, _) => Some(Family::V4),
            (_, true) => Some(Family::V6),
            _ => None,
        },
    })
}

fn agg_config(common: &CommonArgs, passive: PassiveMethod) -> anyhow::Result<AggregatorConfig> {
    Ok(AggregatorConfig {
        filter: filter_from(common)?,
        max_sockets: common.max_sockets,
        max_ports: common.max_ports,
        passive_method: passive,
        ..AggregatorConfig::default()
    })
}

fn health_config(common: &CommonArgs) -> HealthConfig {
    HealthConfig {
        close_wait_threshold_ns: common.close_wait_threshold.as_nanos() as u64,
        poll_interval_ns: common.poll_interval.as_nanos() as u64,
        ..HealthConfig::default()
    }
}

/// Whether the kernel measures routine transitions itself (with the settings it needs), and
/// if not, why (when `auto` chose streaming).
fn choose_aggregation(
    common: &CommonArgs,
    events: bool,
    cfg: &AggregatorConfig,
) -> anyhow::Result<(Option<KernelAggregation>, Option<&'static str>)> {
    let f = &cfg.filter;
    let needs_stream = if events {
        Some("`events` shows every event")
    } else if common.record.is_some() {
        Some("--record keeps every event")
    } else if f.pid.is_some() {
        Some("--pid matches socket owners in userspace")
    } else if f.ports.len() > MAX_KERNEL_PORTS {
        Some("more than 8 --port values")
    } else {
        None
    };
    match (common.aggregate, needs_stream) {
        (Aggregate::User, _) => Ok((None, None)),
        (Aggregate::Kernel, Some(why)) => bail!(
            "--aggregate kernel cannot work here: {why}, which needs every event in userspace; drop --aggregate kernel"
        ),
        (Aggregate::Auto, Some(why)) => Ok((None, Some(why))),
        (Aggregate::Kernel | Aggregate::Auto, None) => Ok((
            Some(KernelAggregation {
                netns: f.netns.unwrap_or(0),
                family: match f.family {
                    Some(Family::V4) => AF_INET,
                    Some(Family::V6) => AF_INET6,
                    None => 0,
                },
                ports: f.ports.clone(),
                max_ports: u32::try_from(cfg.max_ports).unwrap_or(u32::MAX),
                max_syns: u32::try_from(cfg.max_pending_syns).unwrap_or(u32::MAX),
                max_sockets: u32::try_from(cfg.max_sockets).unwrap_or(u32::MAX),
            }),
            None,
        )),
    }
}

/// Namespaces the sock_diag poller looks into: the one asked for, or all.
fn poll_targets(common: &CommonArgs, filter_netns: Option<u32>) -> anyhow::Result<Targets> {
    match (&common.netns, filter_netns) {
        (Some(arg), Some(inode)) => poller::target_for(arg, inode),
        _ => Ok(Targets::All),
    }
}

fn outputs(common: &CommonArgs) -> anyhow::Result<Outputs> {
    Outputs::open(
        common.record.as_deref(),
        common.hdr_log.as_deref(),
        common.json_summary.as_deref(),
        common.interval,
    )
}

type Stdout = BufWriter<io::StdoutLock<'static>>;

fn stdout() -> Stdout {
    BufWriter::with_capacity(1 << 16, io::stdout().lock())
}

/// `events` (with `args`) or `watch` (without) on the live kernel.
async fn live(common: &CommonArgs, args: Option<&EventsArgs>) -> anyhow::Result<()> {
    // From here on, SIGINT/SIGTERM end the run cleanly whenever they come.
    let mut signals = StopSignals::install()?;
    // Everything that can fail on bad input fails before any probe is attached.
    let filter_cfg = agg_config(common, PassiveMethod::SockOps)?;
    let targets = poll_targets(common, filter_cfg.filter.netns)?;
    let (aggregate, stream_reason) = choose_aggregation(common, args.is_some(), &filter_cfg)?;
    let out = outputs(common)?;
    let metrics = common.metrics_addr.map(prometheus::serve).transpose()?;
    let drop_to = common.user.as_deref().map(privileges::lookup).transpose()?;
    if let (Some(acct), Some(name)) = (drop_to, common.user.as_deref()) {
        // The JSON summary is renamed into place at exit, as that user.
        if let Some(path) = &common.json_summary {
            privileges::check_dir_writable(acct, name, path)?;
        }
        if let Some(f) = &out.json_summary {
            f.chown(acct.uid, acct.gid)?;
        }
    }
    let mut opts = KernelOptions {
        ring_bytes: common.ring_size,
        debug_bpf: common.debug_bpf,
        passive: common.passive_method,
        state_hook: common.state_hook,
        aggregate,
    };
    let mut src = match KernelSource::open(&opts) {
        Ok(src) => src,
        Err(e) if opts.aggregate.is_some() && common.aggregate == Aggregate::Auto => {
            eprintln!(
                "tcptrace: in-kernel aggregation unavailable ({e:#}); streaming every event instead"
            );
            opts.aggregate = None;
            KernelSource::open(&opts)?
        }
        Err(e) => return Err(e),
    };
    if let Some(map) = src.take_sock_times() {
        // Snapshots look up each CLOSE_WAIT socket's entry time: exact leak ages.
        tcptrace::source::diag::include_sock_times(map);
    }
    if let Some(why) = stream_reason
        && args.is_none()
    {
        eprintln!(
            "tcptrace: streaming every event to userspace ({why}); costs more than in-kernel aggregation"
        );
    }
    if src.mounted_tracefs {
        eprintln!("tcptrace: tracefs was not mounted; mounted it at /sys/kernel/tracing");
    }
    if let Some(note) = &src.state_note {
        eprintln!("tcptrace: state changes through the classic tracepoint: {note}");
    }
    if let Some(note) = &src.retransmit_note {
        eprintln!("tcptrace: retransmits through the classic tracepoint: {note}");
    }
    if let Some(note) = &src.passive_note {
        eprintln!("tcptrace: passive handshakes measured by srtt (SYN-ACK RTT): {note}");
    }
    eprintln!(
        "tcptrace: attached {} programs ({}); passive handshakes by {}; Ctrl-C to stop",
        src.attached.len(),
        src.attached.join(", "),
        src.passive_method.name()
    );
    if let Some(m) = &metrics {
        eprintln!("tcptrace: Prometheus metrics at http://{}/metrics", m.addr);
    }
    if let Some(acct) = drop_to {
        privileges::drop_to(acct)?;
        eprintln!(
            "tcptrace: now running as uid {} gid {} with no capabilities",
            acct.uid, acct.gid
        );
    }
    let cfg = AggregatorConfig {
        passive_method: src.passive_method,
        ..filter_cfg
    };
    let clock = WallClock::now();
    let events = args.map(|a| {
        let format = if a.json { Format::Json } else { Format::Text };
        EventsSink::new(stdout(), format, clock)
    });
    let mut pipe = Pipeline::new(cfg, health_config(common), events, out, clock);
    pipe.resolve_owners();
    let start_ns = monotonic_now_ns();
    pipe.begin(start_ns)?;
    // The first snapshot is taken now, so sockets that existed before tracing are known.
    let poll = Poller::start(
        targets.clone(),
        common.poll_interval,
        poller::closing_every(common.poll_interval, common.close_wait_threshold),
        health_config(common).port_exhaustion_ratio,
    );
    let mut poll_warned = false;
    let watching = args.is_none();
    let tty = io::stdout().is_terminal();
    let passive_note = src.passive_note.clone();
    let mut prev = watch::Previous::default();
    // The pipeline is used by both callbacks; they never run at the same time.
    let pipe = std::cell::RefCell::new(pipe);
    let stats = run_live(
        &mut src,
        &mut signals,
        common.duration,
        common.interval,
        |batch, lost, folded| {
            let mut p = pipe.borrow_mut();
            p.gap(lost)?;
            if let Some(f) = folded {
                p.fold(monotonic_now_ns(), f)?;
            }
            while let Ok(snaps) = poll.rx.try_recv() {
                let snaps = match snaps {
                    Ok(s) => s,
                    Err(e) => {
                        // Diagnosis degrades; tracing goes on.
                        if !poll_warned {
                            eprintln!("tcptrace: warning: socket snapshot failed: {e:#}");
                            poll_warned = true;
                        }
                        continue;
                    }
                };
                for s in snaps {
                    if let Flow::Stop = p.snapshot(s)? {
                        return Ok(Flow::Stop);
                    }
                }
            }
            p.batch(batch)
        },
        |stats| {
            let p = pipe.borrow();
            let mut totals = p.totals;
            totals.lost = stats.kernel.total_lost();
            totals.undecodable = stats.undecodable;
            if let Some(m) = &metrics {
                let snap = prometheus::MetricsSnapshot::build(
                    &p.agg,
                    &p.health,
                    &totals,
                    monotonic_now_ns(),
                );
                if let Ok(mut shared) = m.shared.lock() {
                    *shared = snap;
                }
            }
            if !watching {
                return Ok(());
            }
            let frame = watch::render(
                &p.agg,
                &p.health,
                monotonic_now_ns(),
                &totals,
                stats.elapsed.as_secs_f64(),
                &mut prev,
                passive_note.as_deref(),
            );
            let mut o = io::stdout().lock();
            let r = if tty {
                write!(o, "\x1b[H\x1b[2J{frame}")
            } else {
                writeln!(o, "{frame}")
            };
            match r.and_then(|()| o.flush()) {
                Ok(()) => Ok(()),
                Err(e) => tcptrace::run::output_error(e).map(|_| ()),
            }
        },
    )
    .await?;
    drop(poll);
    let mut pipe = pipe.into_inner();
    // A last snapshot, so counters and drops cover the whole run.
    match poller::poll(&targets, poller::Dump::All) {
        Ok(snaps) => {
            for s in snaps {
                pipe.snapshot(s)?;
            }
        }
        Err(e) => eprintln!("tcptrace: warning: final socket snapshot failed: {e:#}"),
    }
    let shown = pipe.shown;
    let summary = pipe.finish(
        monotonic_now_ns(),
        stats.kernel.total_lost(),
        stats.undecodable,
    )?;
    closing_line(&summary, args.is_some().then_some(shown));
    Ok(())
}

fn closing_line(s: &Summary, shown: Option<u64>) {
    let shown = shown.map_or(String::new(), |n| format!("{n} shown, "));
    let in_kernel = s.in_kernel.map_or(String::new(), |k| {
        format!("{} state changes measured in the kernel, ", k.transitions)
    });
    eprintln!(
        "tcptrace: {} events received, {in_kernel}{shown}{} lost (ring buffer full or skipped by the kernel), {} undecodable, {} sockets evicted, {:.1}s",
        s.events.received, s.events.lost, s.events.undecodable, s.sockets.evicted, s.duration_s
    );
}

fn replay(common: &CommonArgs, args: &ReplayArgs) -> anyhow::Result<()> {
    let mut rec = Replay::open(&args.file)?;
    let cfg = agg_config(common, rec.header.passive_method)?;
    let out = outputs(common)?;
    let clock = WallClock::with_offset(i128::from(rec.header.wall_offset_ns));
    let events = args.events.then(|| {
        let format = if args.json {
            Format::Json
        } else {
            Format::Text
        };
        EventsSink::new(stdout(), format, clock)
    });
    let mut pipe = Pipeline::new(cfg, health_config(common), events, out, clock);
    pipe.begin(rec.header.start_ns)?;
    let mut batch = Vec::with_capacity(4096);
    loop {
        let next = rec.next_item()?;
        let flush = !matches!(next, Some(Item::Event(_))) || batch.len() == batch.capacity();
        if flush && !batch.is_empty() {
            if let Flow::Stop = pipe.batch(&batch)? {
                break;
            }
            batch.clear();
        }
        match next {
            None => break,
            Some(Item::Event(ev)) => batch.push(ev),
            Some(Item::Snapshot(s)) => {
                if let Flow::Stop = pipe.snapshot(s)? {
                    break;
                }
            }
            Some(Item::Owner(inode, p)) => pipe.owner(inode, p),
            Some(Item::Gap(n)) => pipe.gap(n)?,
        }
    }
    let trailer = rec.trailer().unwrap_or_default();
    if !args.events {
        let mut totals = pipe.totals;
        totals.lost = trailer.lost;
        totals.undecodable = trailer.undecodable;
        let secs = trailer.end_ns.saturating_sub(rec.header.start_ns) as f64 / 1e9;
        let frame = watch::render(
            &pipe.agg,
            &pipe.health,
            trailer.end_ns,
            &totals,
            secs,
            &mut watch::Previous::default(),
            None,
        );
        print!("{frame}");
    }
    let summary = pipe.finish(trailer.end_ns, trailer.lost, trailer.undecodable)?;
    closing_line(&summary, None);
    Ok(())
}

fn report_cmd(args: &ReportArgs) -> anyhow::Result<()> {
    let text = report::run(&args.files, args.from, args.to, args.tag.as_deref())?;
    print!("{text}");
    Ok(())
}
