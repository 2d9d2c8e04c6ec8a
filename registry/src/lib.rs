//! The model registry's storage: a local directory or an S3-compatible
//! object store, behind one blocking API that the gateway's manager thread
//! and the trainer call. Keys are `/`-separated paths under the registry
//! root (`fraud/7/manifest.json`); the layout itself belongs to
//! `quiver-contract`.
//!
//! - [`store`]: the two backends and what they share: reads, conditional
//!   reads (`If-None-Match`), writes, conditional writes (`If-Match` /
//!   `If-None-Match` on S3, lock-and-rename on a directory), listing.
//! - [`cas`]: the compare-and-swap loop every writer of shared state goes
//!   through, with retry, and its property test against a plain model.
//! - [`control`]: the registry's shared documents on top: routing state,
//!   the index replicas poll, version publishing, the leader lease.

pub mod cas;
pub mod control;
pub mod store;

pub use cas::{Change, UpdateError};
pub use store::{Doc, Entry, Expect, Fresh, Registry, RegistryError, S3Settings, Tag};
