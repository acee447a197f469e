//! Integration tests: the real `photosync` binary against the Graph emulator, a temp photo tree
//! and a real SQLite file. One binary, a module per capability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

mod backfill;
mod crash;
mod daemon;
mod disk;
mod faults;
mod fuzz;
mod helpers;
mod identity;
mod image;
mod lock;
mod operator;
mod soak;
mod upn;
mod uptime;
