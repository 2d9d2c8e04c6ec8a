//! ONNX model files, as Quiver's gateway and trainer handle them:
//!
//! - [`proto`]: the `onnx-ml.proto` messages Quiver writes (the trainer's
//!   exports, the nodes a rewrite puts in);
//! - [`wire`]: a message split into its fields on the wire, so a rewrite
//!   keeps every byte it does not change;
//! - [`zipmap`]: the load-time rewrite that serves a classifier's ZipMap
//!   output (a sequence of maps) as its `[batch, classes]` tensor, with the
//!   class labels.

pub mod proto;
pub mod wire;
pub mod zipmap;
