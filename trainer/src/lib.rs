//! The Quiver sidecar trainer.
//!
//! - [`onnx`]: the ONNX writer (protobuf messages, graph builder).
//! - [`train`]: data set, MLP and gradient-boosted trees, offline metrics.
//! - [`parity`]: runs an exported graph in ONNX Runtime and compares it
//!   with the trainer's own forward pass.

pub mod join;
pub mod monitor;
pub mod onnx;
pub mod parity;
pub mod source;
pub mod train;
pub mod window;
