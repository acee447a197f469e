//! Integration tests: the real `photosync` binary against the Graph emulator, a temp photo tree
//! and a real SQLite file. One binary, a module per capability.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

mod backfill;
mod crash;
mod credentials;
mod daemon;
mod disk;
mod faults;
mod fuzz;
mod helpers;
mod identity;
mod image;
mod json;
mod lock;
mod operator;
mod photos;
mod soak;
mod tty;
mod upn;
mod uptime;
