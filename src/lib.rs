//! photosync keeps Microsoft 365 / Entra ID profile photos equal to the photos HR keeps in a
//! directory tree.
//!
//! The library holds everything; the `photosync` binary parses arguments, sets up logging and
//! maps results to exit codes. Data flows one way:
//! [`source`] (walk) → [`plan`] (with [`mapping`] and [`state`]) → [`queue`] → workers
//! ([`image`], [`limiter`]) → [`graph`] (with [`auth`]) → [`state`]; [`engine`] wires them up
//! and is shared by every command.

#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod config;
pub mod engine;
pub mod graph;
pub mod image;
pub mod limiter;
pub mod mapfile;
pub mod mapping;
pub mod plan;
pub mod queue;
pub mod report;
pub mod resolve;
pub mod server;
pub mod source;
pub mod state;
pub mod stats;
pub mod watch;
