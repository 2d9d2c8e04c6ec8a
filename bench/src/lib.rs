//! `quiver-bench`: the load-test harness behind every number in the README.
//!
//! - [`schedule`]: open-loop arrival times and latency from the intended
//!   send time (coordinated-omission correction);
//! - [`histogram`]: HdrHistogram of nanoseconds and its percentile summary;
//! - [`workload`]: the OIP v2 request each point sends (JSON or binary);
//! - [`endpoint`]: what the driver loads (HTTP and gRPC);
//! - [`kafka`]: the Kafka mode, a producer on the ingress's requests topic
//!   and a consumer matching answers by correlation id;
//! - [`http`]: the HTTP/1.1 keep-alive client (plaintext or TLS);
//! - [`grpc`]: the gRPC client (unary or streaming, typed or raw, TLS);
//! - [`driver`]: runs one load point (open or closed loop) into samples;
//! - [`analysis`]: samples → percentiles, errors, achieved rate, stages,
//!   timeline, SLO verdict;
//! - [`swap`]: the hot-swap scenario (publish versions during a run);
//! - [`inprocess`] and [`bare`]: the compute and transport ceilings;
//! - [`result`]: the JSON result files; [`report`]: Markdown and SVG plots;
//! - [`progress`]: the progress bar; [`cli`]: the command line;
//! - [`streams`]: labelled streams with concept drift (synthetic and real);
//! - [`online`]: the closed-loop demo's traffic generator, prequential
//!   scoring and accuracy plot.

pub mod analysis;
pub mod bare;
pub mod cli;
pub mod driver;
pub mod endpoint;
pub mod grpc;
pub mod histogram;
pub mod http;
pub mod inprocess;
pub mod kafka;
pub mod online;
pub mod progress;
pub mod report;
pub mod result;
pub mod schedule;
pub mod streams;
pub mod swap;
pub mod workload;
