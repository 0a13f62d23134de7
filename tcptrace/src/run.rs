//! The live loop shared by every mode: wait for the kernel, drain, hand batches to a consumer,
//! stop cleanly on Ctrl-C, SIGTERM or `--duration`, and make losses visible.
use std::{
    io::{self, ErrorKind},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    event::{DecodeError, Event},
    folded::Folded,
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

/// SIGINT and SIGTERM handlers. Installed before anything is attached, so a signal that comes
/// at any moment ends the run cleanly (outputs complete) instead of killing the process.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn install() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Resolves when a signal came or `duration` passed.
    async fn wait(&mut self, duration: Option<Duration>) {
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = timer => {}
        }
    }
}

/// How often aggregation mode reads the kernel's histograms.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Runs until stopped. `consume` gets every batch (possibly empty) in arrival order, with the
/// number of program runs the kernel skipped since the previous batch (a gap: durations across
/// it are unknown; ring-buffer drops are marked on the events themselves) and, in aggregation
/// mode, every [`FOLD_INTERVAL`] and at the end, what the kernel measured meanwhile;
/// `tick` is called every `tick_every` with the stats so far.
pub async fn run_live(
    src: &mut KernelSource,
    signals: &mut StopSignals,
    duration: Option<Duration>,
    tick_every: Duration,
    mut consume: impl FnMut(&[Event], u64, Option<&Folded>) -> anyhow::Result<Flow>,
    mut tick: impl FnMut(&RunStats) -> anyhow::Result<()>,
) -> anyhow::Result<RunStats> {
    let started = Instant::now();
    // Twice per tick (and fold): a timer as long as the tick would, with its jitter, now and
    // then find the tick not quite due and skip it.
    src.pace(tick_every.min(FOLD_INTERVAL) / 2);
    let stop = signals.wait(duration);
    tokio::pin!(stop);
    let mut stats = RunStats::default();
    let mut batch = Vec::with_capacity(crate::source::kernel::CHUNK);
    let mut bad: Vec<DecodeError> = Vec::new();
    let mut last_tick = Instant::now();
    let mut warned_lost = 0;
    let mut seen_missed = 0;
    let mut stopping = false;
    let mut last_fold = Instant::now();
    loop {
        if !stopping {
            tokio::select! {
                biased;
                () = &mut stop => { stopping = true; }
                r = src.wait() => r?,
            }
        }
        // Runs the kernel skipped (recursion guard) leave no mark on the events: they are
        // checked at every drain and flagged before its first chunk. Ring-buffer drops are
        // marked on the next event the CPU writes (its gap bit), right where they happened.
        src.start_drain(stopping);
        stats.kernel = src.counters();
        let lost_now = stats.kernel.total_lost();
        let mut gap = stats.kernel.missed.saturating_sub(seen_missed);
        seen_missed = stats.kernel.missed;
        let tick_due = last_tick.elapsed() >= tick_every || stopping;
        let mut flow;
        bad.clear();
        loop {
            batch.clear();
            let more = src.drain(&mut batch, &mut bad);
            stats.received += batch.len() as u64;
            // Folded with the drain's last chunk, before the tick, so the view shows the latest
            // second; and after the drain, so the retransmits streamed meanwhile are in too.
            let folded =
                if !more && src.aggregating() && (last_fold.elapsed() >= FOLD_INTERVAL || tick_due)
                {
                    last_fold = Instant::now();
                    src.fold()?
                } else {
                    None
                };
            flow = consume(&batch, std::mem::take(&mut gap), folded.as_ref())?;
            if !more || matches!(flow, Flow::Stop) {
                break;
            }
        }
        stats.undecodable += bad.len() as u64;
        if let Some(first) = bad.first() {
            eprintln!(
                "tcptrace: warning: {} kernel records could not be decoded (first: {first})",
                bad.len()
            );
        }
        if tick_due {
            last_tick = Instant::now();
            stats.elapsed = started.elapsed();
            if lost_now > warned_lost {
                eprintln!(
                    "tcptrace: warning: {} events lost so far ({} with the ring buffer full: raise --ring-size; {} skipped by the kernel while another BPF program ran)",
                    lost_now, stats.kernel.lost, stats.kernel.missed
                );
                warned_lost = lost_now;
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
