//! `photosync run` as a library: the daemon loop, its triggers, systemd notification and the
//! health/metrics server.

pub mod server;
