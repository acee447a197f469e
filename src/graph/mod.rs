//! Microsoft Graph: the client (photo upload, metadata and delete, with the token attached),
//! app-only tokens, user lookups, and every URL photosync sends.
//!
//! One `reqwest::Client` for the process (connections are reused). Every request carries a fresh
//! `client-request-id`; every answer's `request-id` is kept for the ledger and the logs, because
//! that is what Microsoft support asks for. What an error means for the caller (retry, wait,
//! give up, stop) is decided in one place: [`GraphError::class`].
//!
//! Inside: [`client`] sends, [`error`] classifies, [`auth`] fetches tokens, [`resolve`] builds
//! and matches user lookups, [`paths`] holds the URL grammar and its encoding. Nothing here
//! reads the ledger or the source tree.

pub(crate) mod auth;
pub(crate) mod client;
pub(crate) mod error;
pub mod paths;
pub(crate) mod resolve;

pub use client::{connect, ConnectError, GraphClient, Reply};
pub use error::{ErrorClass, GraphError};
