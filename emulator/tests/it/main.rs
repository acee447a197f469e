//! Integration tests: a real HTTP client against an emulator started in-process on
//! `127.0.0.1:0`, one module per capability.
#![allow(clippy::unwrap_used)]

mod faults;
mod helpers;
mod identity;
mod photos;
mod token;
mod users;
