//! The closed-loop demo's client side: a labelled stream sent through the
//! gateway with labels arriving late, scored prequentially (each labelled
//! prediction by the version that served it), then plotted.
//!
//! - [`generator`]: the traffic generator (`quiver-bench stream`);
//! - [`delay`]: when a label is released; [`score`]: prequential metrics;
//! - [`infer`]: the request, answer and feedback bodies;
//! - [`events`]: drift onsets, the gateway's rollout decisions and the
//!   trainer's events on one timeline;
//! - [`output`]: the run's files; [`report`] and [`plot`]: the summary and
//!   the accuracy-over-time SVG (`quiver-bench stream-report`);
//! - [`cli`]: the subcommands.

pub mod cli;
pub mod delay;
pub mod events;
pub mod generator;
pub mod infer;
pub mod output;
pub mod plot;
pub mod report;
pub mod score;
