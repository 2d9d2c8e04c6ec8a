//! The Kafka mode: loads a gateway's Kafka ingress end to end, as a Kafka
//! producer sees it. Request records go to the requests topic, keyed by a
//! correlation id; a consumer of the responses topic matches each answer
//! to its request by that id. Latency runs from the record's due time
//! (open loop, the same [`Schedule`] as HTTP) to the answer's arrival, and
//! the samples go through the same analysis, result file and report as
//! the HTTP mode.
//!
//! - **Open loop**: one thread produces each record at its due time, with
//!   no per-record task; late produces are charged to latency.
//! - **Saturation** (`--closed`): a window of records in flight, one more
//!   produced as each answer arrives, like N closed-loop connections.
//! - **Ready first**: before any point, probes go out until one is
//!   answered, so the gateway's group join, the topics' creation and this
//!   consumer's assignment stay out of every measured window.
//! - **Nothing is dropped silently**: a record the broker refused, one
//!   never answered, an error answer and a duplicate answer are each
//!   counted in the result.

mod client;
mod retention;

use client::{Client, progress};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use quiver_contract::records::{REQUESTS_TOPIC, RESPONSES_TOPIC};
use serde::{Deserialize, Serialize};

use crate::driver::Plan;
use crate::result::{LoadRun, ResultFile, RunShape};
use crate::workload::{self, Format, InputSpec};
use crate::{analysis, cli, http, report};

/// `quiver-bench kafka`: load a gateway's Kafka ingress.
#[derive(Args, Debug)]
pub struct KafkaArgs {
    /// Bootstrap brokers, HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    brokers: String,
    /// The gateway's requests topic (`kafka.ingress.requests_topic`).
    #[arg(long, default_value = REQUESTS_TOPIC)]
    requests_topic: String,
    /// The gateway's responses topic (`kafka.ingress.responses_topic`).
    #[arg(long, default_value = RESPONSES_TOPIC)]
    responses_topic: String,
    #[command(flatten)]
    request: cli::RequestArgs,
    /// The gateway's HTTP address, only to read the model's inputs.
    #[arg(long)]
    url: Option<String>,
    #[command(flatten)]
    points: cli::PointArgs,
    /// Saturation: --in-flight records outstanding, one produced per
    /// answer. With --rate or --sweep, one such point after the sweep.
    #[arg(long)]
    closed: bool,
    /// After the saturation point, one open-loop point at half its rate, on
    /// the same topics (compare.sh runs it on a fresh broker instead: a
    /// broker whose fetch cost grows with what it holds would make it
    /// measure the saturation point's records).
    #[arg(long, requires = "closed")]
    half_saturation: bool,
    /// Records outstanding in the saturation point.
    #[arg(long, default_value_t = 2048)]
    in_flight: usize,
    /// Seconds answers are still waited for after a point's last record.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Seconds to wait for the first answer (group join, topic creation).
    #[arg(long, default_value_t = 60.0)]
    ready_timeout: f64,
    /// librdkafka producer option KEY=VALUE (repeatable), over the defaults
    /// linger.ms 5, compression.type none.
    #[arg(long = "producer-option")]
    producer_options: Vec<String>,
    /// librdkafka consumer option KEY=VALUE (repeatable).
    #[arg(long = "consumer-option")]
    consumer_options: Vec<String>,
    /// Delete the records this run no longer needs (requests the gateway's
    /// group committed, responses already read) every 250 ms, as a
    /// broker's retention would: for a test broker whose fetch cost grows
    /// with what a partition holds. Only for topics this run owns.
    #[arg(long)]
    delete_consumed: bool,
    /// The gateway's consumer group (`kafka.ingress.group_id`), read by
    /// --delete-consumed.
    #[arg(long, default_value = "quiver-gateway")]
    gateway_group: String,
    /// The target's name in reports.
    #[arg(long, default_value = "quiver-kafka")]
    label: String,
    /// Write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What the Kafka mode adds to a load run's result file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KafkaReport {
    pub brokers: String,
    pub requests_topic: String,
    pub responses_topic: String,
    /// Seconds from the first probe to its answer: the gateway's group
    /// join, topic creation and this consumer's assignment, excluded from
    /// every point.
    pub ready_s: f64,
    /// One per point, in the order of `points`.
    pub points: Vec<KafkaPoint>,
    /// Answers per second end to end at saturation (the closed point).
    pub saturation_rps: Option<f64>,
    /// The half-saturation point's offered rate and its p99.
    pub half_rate_rps: Option<f64>,
    pub half_rate_p99_ms: Option<f64>,
}

/// The fate of every record one point produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaPoint {
    /// Records handed to the producer.
    pub produced: u64,
    /// Records the broker refused (or that timed out in the producer),
    /// and records librdkafka's queue never took.
    pub produce_failed: u64,
    /// Records answered (any status), each counted once.
    pub answered: u64,
    /// Answered with a status other than 2xx.
    pub error_answers: u64,
    /// Produced and confirmed, but never answered before the drain ended.
    pub unanswered: u64,
    /// Second and later answers to one record (at-least-once redelivery).
    pub duplicates: u64,
    /// Answers to an earlier point's records that arrived during this one.
    pub stale: u64,
}

/// The record value: the model's OIP v2 JSON request plus `model_name`
/// (and `model_version` when pinned).
fn record_value(a: &KafkaArgs) -> Result<Vec<u8>> {
    let inputs: Vec<InputSpec> = if a.request.inputs.is_empty() {
        let url = a
            .url
            .as_deref()
            .context("give the model's inputs with --input, or the gateway's --url to read them")?;
        let path = format!("/v2/models/{}", a.request.model);
        let metadata = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let addr = http::resolve(url).await?;
                http::wait_ready_with(addr, None, Duration::from_secs(30)).await?;
                http::get_json_with(addr, None, &path).await
            })?;
        InputSpec::from_metadata(&metadata)?
    } else {
        a.request
            .inputs
            .iter()
            .map(|s| InputSpec::parse(s))
            .collect::<Result<_>>()?
    };
    let request = workload::build(
        &a.request.model,
        None,
        &inputs,
        a.request.rows,
        Format::Json,
    )?;
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&request.body).context("the built request is not a JSON object")?;
    body.insert("model_name".into(), a.request.model.clone().into());
    if let Some(v) = &a.request.version {
        body.insert("model_version".into(), v.clone().into());
    }
    Ok(serde_json::to_vec(&body)?)
}

/// Runs `quiver-bench kafka`.
pub fn main(a: KafkaArgs) -> Result<()> {
    let machine = cli::machine();
    let open_rates = cli::rates(&a.points.rate, a.points.sweep.as_deref())?;
    if open_rates.is_empty() && !a.closed {
        bail!("give --rate, --sweep or --closed");
    }
    let client = Client::new(&a, record_value(&a)?)?;
    progress(&format!(
        "{}: waiting until the gateway answers on '{}'",
        a.label, a.responses_topic
    ));
    let ready = client.ready(Duration::from_secs_f64(a.ready_timeout))?;
    progress(&format!(
        "{}: first answer after {:.2} s (not measured)",
        a.label,
        ready.as_secs_f64()
    ));
    let slo = Duration::from_secs_f64(a.points.slo_p99_ms / 1e3);
    let plan = |rate: Option<f64>| Plan {
        rate,
        connections: a.in_flight,
        warmup: Duration::from_secs_f64(a.points.warmup),
        duration: Duration::from_secs_f64(a.points.duration),
        timeout: Duration::from_millis(a.points.timeout_ms),
        drain: Duration::from_secs_f64(a.drain),
    };
    let mut points = Vec::new();
    let mut kafka = KafkaReport {
        brokers: a.brokers.clone(),
        requests_topic: a.requests_topic.clone(),
        responses_topic: a.responses_topic.clone(),
        ready_s: ready.as_secs_f64(),
        ..KafkaReport::default()
    };
    let mut run_point = |rate: Option<f64>, points: &mut Vec<crate::result::Point>| {
        let plan = plan(rate);
        let title = rate.map_or(format!("{} saturation", a.label), |r| {
            format!("{} {r:.0}/s", a.label)
        });
        let number = points.len() as u32;
        let (samples, k) = client.point(number, &plan, &title);
        let point = analysis::point(
            &plan,
            &samples,
            slo,
            Duration::from_millis(a.points.slice_ms),
        );
        progress(&format!(
            "{} offered {} achieved {:.0}/s p50 {:.3} ms p99 {:.3} ms produced {} answered {} \
             errors {} unanswered {} refused {} duplicates {} {}",
            a.label,
            rate.map_or("saturation".into(), |r| format!("{r:.0}/s")),
            point.achieved_rps,
            point.latency.p50_us / 1e3,
            point.latency.p99_us / 1e3,
            k.produced,
            k.answered,
            k.error_answers,
            k.unanswered,
            k.produce_failed,
            k.duplicates,
            if point.held { "held" } else { "did not hold" }
        ));
        points.push(point);
        kafka.points.push(k);
        // Let the gateway settle between points.
        std::thread::sleep(Duration::from_millis(500));
    };
    for rate in &open_rates {
        run_point(Some(*rate), &mut points);
        if !a.points.no_stop && analysis::sweep_over(&points, a.points.patience) {
            progress("stopping the sweep (use --no-stop to go on)");
            break;
        }
    }
    let mut saturation = None;
    let mut half = None;
    if a.closed {
        run_point(None, &mut points);
        let rps = points.last().map_or(0.0, |p| p.achieved_rps);
        saturation = Some(rps);
        if a.half_saturation && rps >= 2.0 {
            let rate = (rps / 2.0).round();
            run_point(Some(rate), &mut points);
            half = points.last().map(|p| (rate, p.latency.p99_us / 1e3));
        }
    }
    kafka.saturation_rps = saturation;
    kafka.half_rate_rps = half.map(|h| h.0);
    kafka.half_rate_p99_ms = half.map(|h| h.1);
    let foreign = client.answers.foreign.load(Ordering::Relaxed);
    if foreign > 0 {
        progress(&format!(
            "{foreign} records on the responses topic were not this run's"
        ));
    }
    drop(client);
    let result = LoadRun {
        kafka: Some(kafka.clone()),
        ..LoadRun::new(
            RunShape {
                label: &a.label,
                url: format!("kafka://{}/{}", a.brokers, a.requests_topic),
                format: Format::Json,
                request: &a.request,
                timing: &a.points,
                open: !open_rates.is_empty(),
                connections: a.in_flight,
                client_threads: 1,
            },
            machine,
            points,
        )
    };
    cli::write_out(a.out.as_ref(), &ResultFile::Load(Box::new(result.clone())))?;
    let mut md = report::markdown::render(
        &report::Combined {
            loads: vec![result],
            inprocess: vec![],
            ratios: Default::default(),
            fixed_rate: None,
        },
        &cli::roles_none(),
    );
    md.push_str(&summary(&kafka));
    cli::emit(&md)
}

/// The two headline figures, as Markdown.
pub fn summary(k: &KafkaReport) -> String {
    let mut out = String::from("\nKafka ingress, end to end (produce → answer):\n\n");
    if let Some(s) = k.saturation_rps {
        out.push_str(&format!("- saturation: {s:.0} records/s\n"));
    }
    if let (Some(r), Some(p)) = (k.half_rate_rps, k.half_rate_p99_ms) {
        out.push_str(&format!("- p99 at half that rate ({r:.0}/s): {p:.2} ms\n"));
    }
    let total: BTreeMap<&str, u64> = [
        ("produced", k.points.iter().map(|p| p.produced).sum()),
        ("refused", k.points.iter().map(|p| p.produce_failed).sum()),
        ("answered", k.points.iter().map(|p| p.answered).sum()),
        (
            "error answers",
            k.points.iter().map(|p| p.error_answers).sum(),
        ),
        ("unanswered", k.points.iter().map(|p| p.unanswered).sum()),
        ("duplicates", k.points.iter().map(|p| p.duplicates).sum()),
    ]
    .into_iter()
    .collect();
    let counts: Vec<String> = total.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!(
        "- records: {} (first answer after {:.2} s, not measured)\n",
        counts.join(", "),
        k.ready_s
    ));
    out
}
