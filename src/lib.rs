//! photosync keeps Microsoft 365 / Entra ID profile photos equal to the photos HR keeps in a
//! directory tree.
//!
//! The library holds everything; the `photosync` binary parses arguments, sets up logging and
//! maps results to exit codes. Data flows one way:
//! [`source`] (walk, watch) → [`engine`] (planner with [`mapping`] and a [`ledger`] snapshot →
//! queue → workers with [`image`] → [`graph`] → the ledger writer); [`daemon`] and [`cli`] drive
//! the engine.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod graph;
pub mod image;
pub mod ledger;
pub mod mapping;
pub(crate) mod report;
pub(crate) mod source;
pub mod stats;
