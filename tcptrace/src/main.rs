//! `tcptrace`: the command-line front end. Errors are one line, naming the fix, exit 1.
use std::{
    io::{self, BufWriter, ErrorKind},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Parser as _;
use tcptrace::{
    cli::{Cli, Command, CommonArgs, EventsArgs},
    filter::{Family, Filter, parse_netns},
    lifecycle::Table,
    run::{Flow, run_live},
    sink::{
        WallClock,
        events::{EventsSink, Format},
    },
    source::kernel::{KernelOptions, KernelSource},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let command = cli
        .command
        .unwrap_or(Command::Events(EventsArgs::default()));
    match command {
        Command::Events(args) => events(&cli.common, &args).await,
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

fn open_kernel(common: &CommonArgs) -> anyhow::Result<KernelSource> {
    let src = KernelSource::open(&KernelOptions {
        ring_bytes: common.ring_size,
        debug_bpf: common.debug_bpf,
    })?;
    if src.mounted_tracefs {
        eprintln!("tcptrace: tracefs was not mounted; mounted it at /sys/kernel/tracing");
    }
    eprintln!(
        "tcptrace: attached {} programs ({}); Ctrl-C to stop",
        src.attached.len(),
        src.attached.join(", ")
    );
    Ok(src)
}

async fn events(common: &CommonArgs, args: &EventsArgs) -> anyhow::Result<()> {
    let filter = filter_from(common)?;
    let mut src = open_kernel(common)?;
    let clock = WallClock::now();
    let format = if args.json { Format::Json } else { Format::Text };
    let mut sink = EventsSink::new(
        BufWriter::with_capacity(1 << 16, io::stdout().lock()),
        format,
        clock,
    );
    let mut table = Table::new(common.max_sockets);
    let mut shown = 0u64;
    let stats = run_live(
        &mut src,
        common.duration,
        |batch| {
            for ev in batch {
                let outcome = table.apply(ev);
                if !filter.matches(ev, outcome.owner.map(|o| o.pid)) {
                    continue;
                }
                shown += 1;
                if let Err(e) = sink.write(ev, &outcome) {
                    return output_error(e);
                }
            }
            match sink.flush() {
                Ok(()) => Ok(Flow::Continue),
                Err(e) => output_error(e),
            }
        },
        |_| Ok(()),
    )
    .await?;
    let t = table.stats();
    eprintln!(
        "tcptrace: {} events received, {} shown, {} lost (ring buffer full), {} undecodable, {} sockets evicted, {:.1}s",
        stats.received,
        shown,
        stats.kernel.lost,
        stats.undecodable,
        t.evicted,
        stats.elapsed.as_secs_f64()
    );
    Ok(())
}

/// A closed pipe ends the run quietly; anything else is an error.
fn output_error(e: io::Error) -> anyhow::Result<Flow> {
    if e.kind() == ErrorKind::BrokenPipe {
        return Ok(Flow::Stop);
    }
    Err(e).context("writing to standard output")
}
