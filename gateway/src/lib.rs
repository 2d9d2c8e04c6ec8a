//! Quiver's gateway. A request, in the order it travels:
//!
//! - [`http`]: hyper server, routes of the Open Inference Protocol v2;
//! - [`ingress`]: the same for Kafka producers: a consumer group on the
//!   requests topic, answers to the responses topic;
//! - [`inference`]: one request through routing, admission and the
//!   batcher, shared by HTTP and the Kafka ingress;
//! - [`protocol`]: request and response bodies (JSON and binary tensors);
//! - [`routing`]: which version (stable, canary) a request goes to, by a
//!   stable hash of its key; [`shadow`] sends copies to shadow versions;
//! - [`admission`]: checks a request against the model's inputs;
//! - [`live`]: the set of served model versions, swapped atomically;
//! - [`batcher`]: per model version, a bounded queue and the batch policy,
//!   feeding one OS thread per model instance;
//! - [`backend`]: the engine (ONNX Runtime) that runs a batch.
//!
//! After the answer: [`prediction_log`] logs each prediction (and the
//! labels of the feedback endpoint) to Kafka, spooling to disk while the
//! broker is away, or to a local directory without a broker.
//!
//! Around them: [`config`] (the gateway's TOML file), [`repository`] (the
//! model registry, on disk or in an object store, as the manager reads it),
//! [`manager`] (the one owner of what is loaded and how it is routed:
//! watches the registry, runs loads, publishes the live set, takes part in
//! the fleet's guardrail), [`loader`] (version directory → served version,
//! ZipMap outputs rewritten by `quiver-onnx`), [`probe`] (batchability
//! from what the model does at warm-up),
//! [`rollout`] (canary guardrail policy and statistics), [`model`] (a
//! version's interface), [`tensor`] (typed tensor buffers),
//! [`metrics`] (names and recorder), [`dashboard`] (the live page and
//! its JSON), [`telemetry`] (OpenTelemetry traces), [`error`] (API errors → HTTP status),
//! and [`server`] (`run(settings, listener, shutdown)`).

pub mod admission;
pub mod backend;
pub mod batcher;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod inference;
pub mod ingress;
pub mod live;
pub mod loader;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod plain_http;
pub mod prediction_log;
pub mod probe;
pub mod protocol;
pub mod repository;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod telemetry;
pub mod tensor;

pub use server::run;
