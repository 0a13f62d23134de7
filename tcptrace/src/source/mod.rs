//! Where events come from. Every source yields the same typed [`crate::event::Event`]s.
pub mod kernel;
pub mod record;
pub mod diag;
pub mod netns;
pub mod procnet;
pub mod poller;
