//! tcptrace: watch every TCP connection through the kernel's tracepoints.
//!
//! The shape: **sources** (the kernel ring buffer, a recorded file) produce one typed stream of
//! [`event::Event`]s; a pure **aggregator** ([`aggregate`]) turns events into measurements;
//! **sinks** ([`sink`]) render them: event lines, the live view, the JSON summary, histogram logs.
//! In aggregation mode the kernel measures routine state changes itself and the source hands
//! over its histograms instead ([`folded`]); the aggregator adds them to the same figures.
pub mod aggregate;
pub mod cli;
pub mod diagnose;
pub mod event;
pub mod filter;
pub mod folded;
pub mod hist;
pub mod lifecycle;
pub mod output;
pub mod owners;
pub mod pipeline;
pub mod privileges;
pub mod report;
pub mod run;
pub mod sink;
pub mod source;
