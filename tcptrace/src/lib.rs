//! tcptrace: watch every TCP connection through the kernel's tracepoints.
//!
//! The shape: **sources** (the kernel ring buffer, a recorded file) produce one typed stream of
//! [`event::Event`]s; a pure **aggregator** turns events into measurements; **sinks** render them.
pub mod aggregate;
pub mod event;
pub mod hist;
pub mod filter;
pub mod lifecycle;
pub mod sink;
pub mod source;
pub mod cli;
pub mod run;
