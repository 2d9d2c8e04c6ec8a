//! Quiver's gateway. A request, in the order it travels, from any of the
//! three doors onto one inference path:
//!
//! - the doors: [`http`] (hyper, the Open Inference Protocol v2 routes),
//!   [`grpc`] (tonic, `inference.GRPCInferenceService`) and [`ingress`]
//!   (a consumer group on the Kafka requests topic, answers to the
//!   responses topic); [`tls`] wraps the HTTP and gRPC sockets;
//! - [`inference`]: one request through routing, admission and the
//!   batcher, the same for every door, then its bookkeeping (metrics,
//!   rollout statistics, the prediction log);
//! - [`protocol`]: HTTP request and response bodies (JSON and binary
//!   tensors); the gRPC messages are converted in `grpc`;
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
//! Below every door: [`state`] (what they share: the live set, settings,
//! the admin commands' channel, shadows, the log), [`commands`] (admin
//! commands to the manager), [`auth`] (the admin token check), [`error`]
//! (API errors → HTTP status, gRPC code, metric label), [`metrics`].
//! Beside them: [`dashboard`] (the live page and its JSON) and
//! [`telemetry`] (OpenTelemetry traces, and [`plain_http`], the small
//! blocking client its exporter and the dashboard use).
//!
//! Around them: [`config`] (the TOML file; it assembles the sections each
//! subsystem owns and validates: [`model_settings`], `http::config`,
//! `grpc`, `tls`, `repository::config`, `routing`, `manager::fleet_config`,
//! `prediction_log::settings`), [`repository`] (the model registry, on
//! disk or in an object store, as the manager reads it), [`manager`] (the
//! one owner of what is loaded and how it is routed: watches the registry,
//! runs loads, publishes the live set, takes part in the fleet's
//! guardrail), [`loader`] (version directory → served version, ZipMap
//! outputs rewritten by `quiver-onnx`), [`probe`] (batchability from what
//! the model does at warm-up), [`rollout`] (canary guardrail policy and
//! statistics), [`model`] (a version's interface), [`tensor`] (typed
//! tensor buffers), and [`server`] (`run(settings, listeners, shutdown)`,
//! which only wires the parts together).

pub mod admission;
pub mod auth;
pub mod backend;
pub mod batcher;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod grpc;
pub mod histogram;
pub mod http;
pub mod inference;
pub mod ingress;
pub mod live;
pub mod loader;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod model_settings;
pub mod plain_http;
pub mod prediction_log;
pub mod probe;
pub mod protocol;
pub mod repository;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod state;
pub mod telemetry;
pub mod tensor;
pub mod tls;

pub use server::run;
