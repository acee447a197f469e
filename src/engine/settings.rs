//! The few settings the engine reads, taken from the config once at start: the engine never
//! holds the whole config, so what it depends on is visible here.

use std::time::Duration;

use crate::config::{Config, OnDelete, SourceConfig};

use super::retry::RetryPolicy;

/// How uploads are sent.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub method: reqwest::Method,
    pub workers: usize,
    pub requests_per_second: f64,
    pub burst: u32,
    /// Read the photo's `mediaEtag` back after each upload (the baseline `verify` compares).
    pub record_etag: bool,
}

/// What the planner and the failure records need from `[sync]`.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub on_delete: OnDelete,
    pub max_deletes_per_pass: usize,
    pub retry_failed_after: Duration,
    pub resolve_ttl: Duration,
    pub parked_retry: Duration,
    pub parked_max_age: Duration,
}

/// Everything the engine takes from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub upload: UploadSettings,
    pub retry: RetryPolicy,
    pub sync: SyncSettings,
    pub sources: Vec<SourceConfig>,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let u = &cfg.upload;
        let s = &cfg.sync;
        Settings {
            upload: UploadSettings {
                method: u.method.as_reqwest(),
                workers: u.workers,
                requests_per_second: u.requests_per_second,
                burst: u.burst,
                record_etag: u.record_etag,
            },
            retry: RetryPolicy::from_config(u),
            sync: SyncSettings {
                on_delete: s.on_delete,
                max_deletes_per_pass: s.max_deletes_per_pass,
                retry_failed_after: s.retry_failed_after,
                resolve_ttl: s.resolve_ttl,
                parked_retry: s.parked_retry,
                parked_max_age: s.parked_max_age,
            },
            sources: cfg.sources.clone(),
        }
    }
}
