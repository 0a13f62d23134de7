//! One run's consumers, fed by any source: the aggregator always, plus whichever outputs the user
//! asked for (event lines, recording, histogram log, JSON summary). Live runs and replays go
//! through the same code, which is what makes a replay reproduce the live figures.
use std::{io::Write, path::Path, time::Duration};

use crate::{
    aggregate::{Aggregator, AggregatorConfig},
    diagnose::{Health, HealthConfig, Snapshot},
    event::Event,
    folded::Folded,
    output::AtomicFile,
    owners::{Owners, ProcessInfo},
    run::Flow,
    sink::{
        WallClock,
        events::EventsSink,
        hdrlog::HdrLog,
        summary::{SourceTotals, Summary},
    },
    source::record::{Header, Recorder, Trailer},
};

/// Output files, opened (or checked) before any probe is attached.
#[derive(Default)]
pub struct Outputs {
    pub record: Option<Recorder>,
    pub hdr_log: Option<HdrLog>,
    pub json_summary: Option<AtomicFile>,
}

impl Outputs {
    pub fn open(
        record: Option<&Path>,
        hdr_log: Option<&Path>,
        json_summary: Option<&Path>,
        interval: Duration,
    ) -> anyhow::Result<Outputs> {
        Ok(Outputs {
            record: record.map(Recorder::create).transpose()?,
            hdr_log: hdr_log.map(|p| HdrLog::create(p, interval)).transpose()?,
            json_summary: json_summary.map(AtomicFile::prepare).transpose()?,
        })
    }
}

pub struct Pipeline<W: Write> {
    pub agg: Aggregator,
    pub health: Health,
    pub totals: SourceTotals,
    pub shown: u64,
    /// Resolves socket owners from /proc (live runs only; replays read recorded owners).
    owners: Option<Owners>,
    events: Option<EventsSink<W>>,
    out: Outputs,
    clock: WallClock,
}

/// How long one owner scan of /proc may take.
const OWNER_SCAN_BUDGET: Duration = Duration::from_millis(200);

impl<W: Write> Pipeline<W> {
    pub fn new(
        cfg: AggregatorConfig,
        health: HealthConfig,
        events: Option<EventsSink<W>>,
        out: Outputs,
        clock: WallClock,
    ) -> Self {
        Pipeline {
            agg: Aggregator::new(cfg),
            health: Health::new(health),
            totals: SourceTotals::default(),
            shown: 0,
            owners: None,
            events,
            out,
            clock,
        }
    }

    /// Live runs: look socket owners up in /proc.
    pub fn resolve_owners(&mut self) {
        self.owners = Some(Owners::default());
    }

    /// A socket snapshot from the sock_diag poller (or a recording).
    pub fn snapshot(&mut self, mut s: Snapshot) -> anyhow::Result<Flow> {
        let filter = &self.agg.config().filter;
        s.sockets
            .retain(|d| filter.matches_socket(s.netns, &d.local, &d.remote));
        if !filter.keeps_all_of(s.netns) {
            // The namespace's sockstat counts sockets the filter drops: count the kept ones.
            s.time_wait_total = None;
        }
        let crossed = self.health.on_snapshot(&s);
        if let Some(owners) = &mut self.owners {
            let want = self.health.inodes_wanting_owner(s.ts_ns);
            owners.resolve(&want, OWNER_SCAN_BUDGET);
            for inode in want {
                if let Some(p) = owners.get(inode).cloned() {
                    // Recorded before the snapshot, so a replay knows the owner in time.
                    if let Some(r) = &mut self.out.record {
                        r.write_owner(inode, &p)?;
                    }
                    self.health.set_owner(inode, p);
                }
            }
        }
        if let Some(r) = &mut self.out.record {
            r.write_snapshot(&s)?;
        }
        self.health.end_snapshot(s.ts_ns);
        let mut flow = Flow::Continue;
        if let Some(sink) = &mut self.events {
            for key in crossed {
                if let Some(leak) = self.health.leak_report(&key, s.ts_ns) {
                    self.shown += 1;
                    if let Err(e) = sink.write_leak(s.ts_ns, &leak) {
                        return crate::run::output_error(e);
                    }
                }
            }
            if let Err(e) = sink.flush() {
                flow = crate::run::output_error(e)?;
            }
        }
        Ok(flow)
    }

    /// An owner recorded by a live run (replay).
    pub fn owner(&mut self, inode: u32, p: ProcessInfo) {
        self.health.set_owner(inode, p);
    }

    pub fn begin(&mut self, start_ns: u64) -> anyhow::Result<()> {
        self.agg.start(start_ns);
        if let Some(h) = &mut self.out.hdr_log {
            h.begin(start_ns, &self.clock)?;
        }
        if let Some(r) = &mut self.out.record {
            r.write_header(&Header {
                start_ns,
                wall_offset_ns: self.clock.offset_ns() as i64,
                passive_method: self.agg.config().passive_method,
            })?;
        }
        Ok(())
    }

    /// `lost` events went missing just before this point of the stream: no duration is measured
    /// across it (and the recording marks it, so a replay does the same).
    pub fn gap(&mut self, lost: u64) -> anyhow::Result<()> {
        if lost == 0 {
            return Ok(());
        }
        self.agg.gap();
        self.health.gap();
        if let Some(r) = &mut self.out.record {
            r.write_gap(lost)?;
        }
        Ok(())
    }

    /// Feeds a batch; `Flow::Stop` when the event output went away (closed pipe).
    pub fn batch(&mut self, batch: &[Event]) -> anyhow::Result<Flow> {
        self.totals.received += batch.len() as u64;
        if let Some(r) = &mut self.out.record {
            r.write(batch)?;
        }
        let mut flow = Flow::Continue;
        for ev in batch {
            if let Some(h) = &mut self.out.hdr_log {
                h.advance(&self.agg, ev.ts_ns)?;
            }
            if ev.gap {
                // The kernel dropped events right before this one (ring buffer full).
                self.agg.gap();
                self.health.gap();
            }
            self.health.on_event(ev);
            let (outcome, pass) = self.agg.apply(ev);
            if pass && let Some(sink) = &mut self.events {
                self.shown += 1;
                if let Err(e) = sink.write(ev, &outcome) {
                    flow = crate::run::output_error(e)?;
                    break;
                }
            }
        }
        if let Some(sink) = &mut self.events
            && let Err(e) = sink.flush()
        {
            flow = crate::run::output_error(e)?;
        }
        Ok(flow)
    }

    /// What the kernel measured itself (aggregation mode), as of `now_ns`.
    pub fn fold(&mut self, now_ns: u64, f: &Folded) -> anyhow::Result<()> {
        if let Some(h) = &mut self.out.hdr_log {
            h.advance(&self.agg, now_ns)?;
        }
        self.agg.fold(f);
        Ok(())
    }

    /// Ends the run: closes the histogram log and the recording, writes the JSON summary.
    pub fn finish(mut self, end_ns: u64, lost: u64, undecodable: u64) -> anyhow::Result<Summary> {
        self.agg.finish(end_ns);
        self.totals.lost = lost;
        self.totals.undecodable = undecodable;
        if let Some(h) = self.out.hdr_log.take() {
            h.finish(&self.agg, end_ns)?;
        }
        if let Some(r) = self.out.record.take() {
            r.finish(&Trailer {
                end_ns,
                lost,
                undecodable,
            })?;
        }
        let summary = Summary::build(&self.agg, &self.health, &self.totals, end_ns);
        if let Some(f) = self.out.json_summary.take() {
            f.commit(summary.to_json().as_bytes())?;
        }
        Ok(summary)
    }
}
