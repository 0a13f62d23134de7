//! The live loop shared by every mode: wait for the kernel, drain, hand batches to a consumer,
//! stop cleanly on Ctrl-C, SIGTERM or `--duration`, and make losses visible.
use std::time::{Duration, Instant};

use std::io::{self, ErrorKind};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    event::{DecodeError, Event},
    source::kernel::{KernelCounters, KernelSource},
};

/// What the loop saw, for the closing summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub received: u64,
    pub undecodable: u64,
    pub kernel: KernelCounters,
    pub elapsed: Duration,
}

/// Why the consumer wants to stop early.
pub enum Flow {
    Continue,
    /// The reader of our output went away (e.g. `| head`): stop quietly.
    Stop,
}

/// Resolves when the run should end.
async fn stop_requested(duration: Option<Duration>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = timer => {}
    }
    Ok(())
}

/// Runs until stopped. `consume` gets every batch (possibly empty) in arrival order; `tick` is
/// called about once a second with the stats so far (for live views and loss warnings).
pub async fn run_live(
    src: &mut KernelSource,
    duration: Option<Duration>,
    tick_every: Duration,
    mut consume: impl FnMut(&[Event]) -> anyhow::Result<Flow>,
    mut tick: impl FnMut(&RunStats) -> anyhow::Result<()>,
) -> anyhow::Result<RunStats> {
    let started = Instant::now();
    let stop = stop_requested(duration);
    tokio::pin!(stop);
    let mut stats = RunStats::default();
    let mut batch = Vec::with_capacity(1 << 14);
    let mut bad: Vec<DecodeError> = Vec::new();
    let mut last_tick = Instant::now();
    let mut last_lost = 0;
    let mut stopping = false;
    loop {
        if !stopping {
            tokio::select! {
                biased;
                r = &mut stop => { r?; stopping = true; }
                r = src.wait() => r?,
            }
        }
        batch.clear();
        bad.clear();
        src.drain(&mut batch, &mut bad);
        stats.received += batch.len() as u64;
        stats.undecodable += bad.len() as u64;
        if let Some(first) = bad.first() {
            eprintln!(
                "tcptrace: warning: {} kernel records could not be decoded (first: {first})",
                bad.len()
            );
        }
        let flow = consume(&batch)?;
        if last_tick.elapsed() >= tick_every || stopping {
            last_tick = Instant::now();
            stats.kernel = src.counters();
            stats.elapsed = started.elapsed();
            if stats.kernel.lost > last_lost {
                eprintln!(
                    "tcptrace: warning: {} events lost so far: the ring buffer was full (raise --ring-size)",
                    stats.kernel.lost
                );
                last_lost = stats.kernel.lost;
            }
            tick(&stats)?;
        }
        if stopping || matches!(flow, Flow::Stop) {
            break;
        }
    }
    stats.kernel = src.counters();
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// A closed pipe ends the run quietly; anything else is an error.
pub fn output_error(e: io::Error) -> anyhow::Result<Flow> {
    if e.kind() == ErrorKind::BrokenPipe {
        return Ok(Flow::Stop);
    }
    Err(e).context("writing to standard output")
}
