//! The contract between the Quiver gateway and the trainer. It is data, not
//! calls: both processes read and write the same files and records, and this
//! crate owns their shapes. It depends on serde and a hash, nothing else, so
//! either side can use it without pulling in the other's runtime.
//!
//! - [`layout`]: the model registry on disk, file names, atomic writes.
//! - [`manifest`]: `<model>/<version>/manifest.json`, written last, which
//!   makes a version visible and carries checksums and lineage.
//! - [`routing`]: `<model>/routing.json`, which version is stable, which are
//!   canaries (with weights) and shadows, and where a rollout stands.
//! - [`fleet`]: `<root>/.quiver/`: the registry index that replicas poll,
//!   the guardrail leader's lease, and each replica's traffic report.
//! - [`runs`]: `<model>/runs/<run>.json`, one record per training attempt.
//! - [`records`]: the prediction, label and ingress records, the same on
//!   Kafka and in the local log.
//! - [`segments`]: the local log, directories of JSON-lines segment files
//!   that the gateway writes (embedded mode and broker-outage spool) and the
//!   trainer reads.
//! - [`time`]: RFC 3339 timestamps without a calendar dependency.
//!
//! Every file and record carries a `schema` number. A reader refuses a schema newer than
//! it knows; a change of shape bumps the number here, never ad hoc.

pub mod fleet;
pub mod layout;
pub mod manifest;
pub mod records;
pub mod routing;
pub mod runs;
pub mod segments;
pub mod time;
