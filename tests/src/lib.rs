//! Helpers for the integration tests: the real tracer against real connections in private
//! network namespaces.
//!
//! * [`Netns`]: a network namespace made for one test (deleted on drop), with a way to run code
//!   inside it on a fresh thread, so sockets are made in-process with `std::net`.
//! * [`nft`]: load an nftables ruleset inside a namespace (it dies with the namespace).
//! * [`Tracer`]: the tracer binary as a child process (killed on drop), its JSON events and stderr.
//! * [`events`]: reading and describing the JSON events.
//! * [`counters`]: the kernel's own TCP counters (/proc/net/snmp, /proc/net/netstat) in a namespace.
//! * [`cmd`]: running commands with a time limit.
//! * [`scenario`]: in-process connections with the client's own timing as ground truth.
//! * [`outputs`]: the aggregator's outputs (JSON summary, watch frames, histogram logs, report).
//! * [`diag`]: for the diagnosis tests: listeners with a chosen backlog, non-blocking connects,
//!   `ss` and `sysctl` inside a namespace, lookups in the summary's diagnosis sections.
//!
//! Run as root (they load BPF; a tracer that cannot attach makes the test fail, never skip):
//! `cargo build --release -p tcptrace && TCPTRACE_BIN=$PWD/target/release/tcptrace
//! cargo test --release -p tcptrace-tests -- --test-threads=2`. Without `TCPTRACE_BIN` the
//! tests use `<workspace>/target/release/tcptrace`.

pub mod cmd;
pub mod counters;
pub mod diag;
pub mod events;
pub mod netns;
pub mod outputs;
pub mod scenario;
pub mod tracer;

pub use cmd::{run_ok, run_with_timeout};
pub use counters::Counters;
pub use events::{EventExt, describe, describe_all};
pub use netns::{Netns, gettid, mono_ns, nft};
pub use tracer::{Summary, Tracer, TracerOutput, tracer_bin};
