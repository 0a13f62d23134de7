//! Where events come from. Every source yields the same typed [`crate::event::Event`]s.
pub mod diag;
pub mod kernel;
pub mod netns;
pub mod poller;
pub mod procnet;
pub mod record;
