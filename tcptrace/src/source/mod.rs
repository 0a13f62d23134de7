//! Where events come from. Every source yields the same typed [`crate::event::Event`]s.
pub mod kernel;
pub mod record;
