//! Aggregator throughput on a replayed stream: events per second on one core.
//!
//! Builds a recording of a synthetic connection churn shaped like the real one (each connection:
//! the ten ordinary transitions of client and server sockets, many connections interleaved,
//! socket addresses reused), then times (a) `Aggregator::apply` alone over the decoded events and
//! (b) the whole replay path (read, decode, pipeline) — what `tcptrace replay` does.
//! Run with `cargo xtask bench`. Figures are ratios of this run only; the machine is shared.
use std::{hint::black_box, time::Instant};

use tcptrace::{
    aggregate::{Aggregator, AggregatorConfig},
    event::{Comm, Event, EventKind, TcpState},
    pipeline::{Outputs, Pipeline},
    sink::WallClock,
    source::record::{Header, Recorder, Replay, Trailer},
};

const WAVES: u64 = 4_700;
const IN_FLIGHT: u64 = 64;
const CONNECTIONS: u64 = WAVES * IN_FLIGHT;

fn churn() -> Vec<Event> {
    use TcpState::*;
    let client_steps = [
        (Close, SynSent),
        (SynSent, Established),
        (Established, FinWait1),
        (FinWait1, FinWait2),
        (FinWait2, Close),
    ];
    let server_steps = [
        (Listen, SynRecv),
        (SynRecv, Established),
        (Established, CloseWait),
        (CloseWait, LastAck),
        (LastAck, Close),
    ];
    let mut out = Vec::with_capacity((CONNECTIONS * 10) as usize);
    let mut ts = 1_000_000u64;
    // Process IN_FLIGHT connections step by step, like a load generator with bounded concurrency.
    for wave in 0..WAVES {
        for step in 0..5 {
            for i in 0..IN_FLIGHT {
                let conn = wave * IN_FLIGHT + i;
                // Socket addresses are reused from a small pool, as the slab allocator does.
                let client = 0xffff_8880_0000_0000 + (i * 2) * 0x800;
                let server = client + 0x800;
                let port = 10_000 + (conn % 50_000) as u16;
                for (sk, steps, local, remote) in [
                    (client, &client_steps, port, 80u16),
                    (server, &server_steps, 80u16, port),
                ] {
                    ts += 150;
                    let (old, new) = steps[step];
                    out.push(Event {
                        ts_ns: ts,
                        skaddr: sk,
                        pid: 1000,
                        tid: 1000,
                        comm: Comm::from_str_lossy("load"),
                        netns: 4026531840,
                        local: std::net::SocketAddr::from(([127, 0, 0, 1], local)),
                        remote: std::net::SocketAddr::from(([127, 0, 0, 1], remote)),
                        kind: EventKind::State { old, new },
                        gap: false,
                    });
                }
            }
        }
    }
    out
}

fn main() {
    let events = churn();
    let n = events.len() as f64;
    let path = std::env::temp_dir().join(format!("tcptrace-bench-{}.tcpt", std::process::id()));
    let mut rec = Recorder::create(&path).expect("create recording");
    rec.write_header(&Header {
        start_ns: 0,
        wall_offset_ns: 0,
        passive_method: tcptrace::aggregate::PassiveMethod::SockOps,
    })
    .expect("header");
    rec.write(&events).expect("write");
    let end = events.last().map_or(0, |e| e.ts_ns + 1);
    rec.finish(&Trailer {
        end_ns: end,
        lost: 0,
        undecodable: 0,
    })
    .expect("trailer");

    let mut best_apply = f64::MAX;
    let mut best_replay = f64::MAX;
    for _ in 0..5 {
        let mut agg = Aggregator::new(AggregatorConfig::default());
        let t = Instant::now();
        for ev in &events {
            black_box(agg.apply(ev));
        }
        best_apply = best_apply.min(t.elapsed().as_secs_f64());
        assert_eq!(agg.active.count(), CONNECTIONS);

        let t = Instant::now();
        let mut replay = Replay::open(&path).expect("open");
        let mut pipe: Pipeline<std::io::Sink> = Pipeline::new(
            AggregatorConfig::default(),
            Default::default(),
            None,
            Outputs::default(),
            WallClock::with_offset(0),
        );
        pipe.begin(0).expect("begin");
        let mut batch = Vec::with_capacity(4096);
        while let Some(ev) = replay.next_event().expect("read") {
            batch.push(ev);
            if batch.len() == 4096 {
                pipe.batch(&batch).expect("batch");
                batch.clear();
            }
        }
        pipe.batch(&batch).expect("batch");
        let s = pipe.finish(end, 0, 0).expect("finish");
        best_replay = best_replay.min(t.elapsed().as_secs_f64());
        assert_eq!(s.handshake.active.count, CONNECTIONS);
    }
    let _ = std::fs::remove_file(&path);
    println!(
        "aggregator: {:.0} events in the stream ({} connections, {} in flight)",
        n, CONNECTIONS, IN_FLIGHT
    );
    println!(
        "aggregator apply only:   {:>6.2} M events/s on one core (best of 5)",
        n / best_apply / 1e6
    );
    println!(
        "replay (read+decode+aggregate): {:>6.2} M events/s on one core (best of 5)",
        n / best_replay / 1e6
    );
}
