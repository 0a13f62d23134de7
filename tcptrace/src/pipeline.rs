//! One run's consumers, fed by any source: the aggregator always, plus whichever outputs the user
//! asked for (event lines, recording, histogram log, JSON summary). Live runs and replays go
//! through the same code, which is what makes a replay reproduce the live figures.
use std::{io::Write, path::Path, time::Duration};

use crate::{
    aggregate::{Aggregator, AggregatorConfig},
    event::Event,
    output::AtomicFile,
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
    pub totals: SourceTotals,
    pub shown: u64,
    events: Option<EventsSink<W>>,
    out: Outputs,
    clock: WallClock,
}

impl<W: Write> Pipeline<W> {
    pub fn new(
        cfg: AggregatorConfig,
        events: Option<EventsSink<W>>,
        out: Outputs,
        clock: WallClock,
    ) -> Self {
        Pipeline {
            agg: Aggregator::new(cfg),
            totals: SourceTotals::default(),
            shown: 0,
            events,
            out,
            clock,
        }
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
        let summary = Summary::build(&self.agg, &self.totals);
        if let Some(f) = self.out.json_summary.take() {
            f.commit(summary.to_json().as_bytes())?;
        }
        Ok(summary)
    }
}
