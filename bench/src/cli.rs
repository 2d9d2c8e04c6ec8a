//! The command line: `run` (load one server), `kafka` (load a Kafka
//! ingress), `inprocess` (compute
//! ceiling), `bare-server` (transport ceiling), `report` (side by side);
//! the `stream*` subcommands live in [`crate::online::cli`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::driver::{self, Counters, Plan};
use crate::result::{LoadRun, Machine, ResultFile, RunShape, SwapReport};
use crate::workload::{self, Format, InputSpec};
use crate::{analysis, bare, grpc, http, inprocess, online, progress, report, swap};

/// Load-test harness for OIP v2 inference servers (Quiver, Triton, MLServer, ...).
#[derive(Parser, Debug)]
#[command(name = "quiver-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load one server: one open-loop rate, a rate sweep, or closed loop.
    Run(Box<RunArgs>),
    /// The compute ceiling: run a model in process through ONNX Runtime.
    Inprocess(InprocessArgs),
    /// Load a gateway's Kafka ingress: produce requests, match the answers.
    Kafka(Box<crate::kafka::KafkaArgs>),
    /// The transport ceiling: an HTTP server on the gateway's stack with no model.
    BareServer(BareArgs),
    /// Put result files side by side: report.md, report.json, SVG plots.
    Report(ReportArgs),
    /// Send a drifting labelled stream through the gateway, labels late, scored prequentially.
    Stream(Box<online::cli::StreamArgs>),
    /// Summary and accuracy plot of a `stream` run.
    StreamReport(online::cli::ReportArgs),
    /// Write rows of a stream as CSV (the trainer's bootstrap slice, or the baselines' input).
    StreamExport(online::cli::ExportArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The server: http://HOST:PORT, https://HOST:PORT, or over gRPC
    /// grpc://HOST:PORT and grpcs://HOST:PORT (then --format raw or typed).
    #[arg(long)]
    url: String,
    /// PEM file with the CA that signed the server's certificate, for
    /// https:// and grpcs://.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// gRPC: each connection keeps one ModelStreamInfer stream open and
    /// sends its requests on it, instead of unary ModelInfer calls.
    #[arg(long)]
    stream: bool,
    #[command(flatten)]
    request: RequestArgs,
    /// json or binary over HTTP; raw (default over gRPC) or typed over gRPC.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Closed loop: each connection sends back to back. With --rate or
    /// --sweep, one closed-loop point after the sweep (saturation).
    #[arg(long)]
    closed: bool,
    /// Keep-alive connections (open loop: the most requests in flight).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Threads of the load generator's async runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    points: PointArgs,
    /// The server's name in reports.
    #[arg(long, default_value = "server")]
    label: String,
    /// Write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    swap: SwapArgs,
}

/// The request every point sends: shared by `run` and `kafka`.
#[derive(Args, Debug)]
pub struct RequestArgs {
    /// Model name.
    #[arg(long, default_value = "mlp")]
    pub model: String,
    /// Pin a model version (default: the server's default version).
    #[arg(long)]
    pub version: Option<String>,
    /// Inputs as NAME:DATATYPE:D1xD2 (repeatable); read from the server's
    /// model metadata when not given.
    #[arg(long = "input")]
    pub inputs: Vec<String>,
    /// Rows per request (replaces the dynamic first dimension).
    #[arg(long, default_value_t = 1)]
    pub rows: u64,
}

/// The points of a run and how each is measured: shared by `run` and
/// `kafka`.
#[derive(Args, Debug)]
pub struct PointArgs {
    /// Offered rates per second, comma-separated; several make a sweep.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// A geometric sweep FROM:TO:FACTOR, e.g. 1000:100000:1.5.
    #[arg(long)]
    pub sweep: Option<String>,
    /// Seconds measured per point.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds sent before measuring, per point.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// A point holds when p99 ≤ this (ms), nothing failed, and achieved ≥ 90 % of offered.
    #[arg(long, default_value_t = 5.0)]
    pub slo_p99_ms: f64,
    /// Stop the sweep after this many consecutive points fail to hold (one
    /// noisy point on a shared machine does not end it).
    #[arg(long, default_value_t = 2)]
    pub patience: usize,
    /// Keep sweeping whatever happens.
    #[arg(long)]
    pub no_stop: bool,
    /// Per-request timeout, ms: a later answer counts as a timeout.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Timeline resolution, ms.
    #[arg(long, default_value_t = 1_000)]
    pub slice_ms: u64,
}

/// The hot-swap scenario (open loop, one rate).
#[derive(Args, Debug)]
struct SwapArgs {
    /// Publish new versions into this model repository during the run.
    #[arg(long)]
    swap_repo: Option<PathBuf>,
    /// The .onnx file each new version copies (default: the model's latest version's).
    #[arg(long)]
    swap_source: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    swaps: u32,
    /// Seconds between swaps.
    #[arg(long, default_value_t = 3.0)]
    swap_every: f64,
    /// Seconds after each publish that count as "during a swap".
    #[arg(long, default_value_t = 1.5)]
    swap_window: f64,
    /// Also ask for an immediate load through the admin API with this token.
    #[arg(long, env = "QUIVER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Args, Debug)]
struct InprocessArgs {
    /// The .onnx file.
    #[arg(long)]
    model_path: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batch_sizes: Vec<u64>,
    /// ONNX Runtime intra-op threads (the gateway's per-instance setting).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds measured per batch size.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    #[arg(long, default_value = "onnxruntime")]
    label: String,
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct BareArgs {
    #[arg(long, default_value = "127.0.0.1:8001")]
    addr: String,
    #[arg(long, default_value = "mlp")]
    model: String,
    /// The input it advertises, NAME:DATATYPE:D1xD2.
    #[arg(long, default_value = "features:FP32:-1x16")]
    input: String,
    /// The output it answers with (dynamic dimensions become 1).
    #[arg(long, default_value = "probabilities:FP32:-1x4")]
    output: String,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Result files written by `run` and `inprocess`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Labels of the gateway, the bare server and the in-process run.
    #[arg(long, default_value = "quiver")]
    gateway: String,
    #[arg(long, default_value = "bare")]
    bare: String,
    #[arg(long, default_value = "onnxruntime")]
    inprocess: String,
    /// Rate for the p50/p99 comparison (default: the highest rate all open-loop runs share).
    #[arg(long)]
    fixed_rate: Option<f64>,
}

pub fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Run(a) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.threads.max(1))
            .enable_all()
            .build()?
            .block_on(run(*a)),
        Command::Inprocess(a) => {
            let r = inprocess::run(
                &a.label,
                &a.model_path,
                a.threads,
                &a.batch_sizes,
                Duration::from_secs_f64(a.seconds),
                machine(),
            )?;
            let md = report::markdown::render(
                &report::Combined {
                    loads: vec![],
                    inprocess: vec![r.clone()],
                    ratios: Default::default(),
                    fixed_rate: None,
                },
                &roles_none(),
            );
            write_out(a.out.as_ref(), &ResultFile::Inprocess(r))?;
            emit(&md)
        }
        Command::Kafka(a) => crate::kafka::main(*a),
        Command::BareServer(a) => bare::serve(
            &a.addr,
            &a.model,
            &InputSpec::parse(&a.input)?,
            &InputSpec::parse(&a.output)?,
        ),
        Command::Report(a) => {
            let roles = report::Roles {
                gateway: a.gateway,
                bare: a.bare,
                inprocess: a.inprocess,
                fixed_rate: a.fixed_rate,
            };
            report::write(&a.out_dir, &a.files, &roles)?;
            emit(&std::fs::read_to_string(a.out_dir.join("report.md"))?)
        }
        Command::Stream(a) => online::cli::stream(*a),
        Command::StreamReport(a) => online::cli::stream_report(a),
        Command::StreamExport(a) => online::cli::export(a),
    }
}

pub(crate) fn roles_none() -> report::Roles {
    report::Roles {
        gateway: String::new(),
        bare: String::new(),
        inprocess: String::new(),
        fixed_rate: None,
    }
}

/// The report on stdout: the one thing this CLI prints there.
pub(crate) fn emit(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub(crate) fn write_out(path: Option<&PathBuf>, file: &ResultFile) -> Result<()> {
    if let Some(p) = path {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(p, serde_json::to_vec_pretty(file)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub(crate) fn machine() -> Machine {
    let load_avg_1m = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok());
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_avg_1m,
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

/// The offered rates of a run, in order.
pub fn rates(rate: &[f64], sweep: Option<&str>) -> Result<Vec<f64>> {
    let mut out = rate.to_vec();
    if let Some(s) = sweep {
        let parts: Vec<f64> = s
            .split(':')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("--sweep {s}: expected FROM:TO:FACTOR"))?;
        let [from, to, factor] = parts[..] else {
            bail!("--sweep {s}: expected FROM:TO:FACTOR");
        };
        if from <= 0.0 || factor <= 1.0 {
            bail!("--sweep {s}: FROM must be > 0 and FACTOR > 1");
        }
        let mut r = from;
        while r <= to * 1.000_001 {
            out.push(r.round());
            r *= factor;
        }
    }
    if out.iter().any(|r| *r <= 0.0) {
        bail!("rates must be positive");
    }
    Ok(out)
}

/// The endpoint a run loads, from its URL and format.
async fn endpoint(a: &RunArgs) -> Result<(Format, AnyEndpoint)> {
    let given: Option<Vec<InputSpec>> = (!a.request.inputs.is_empty())
        .then(|| {
            a.request
                .inputs
                .iter()
                .map(|s| InputSpec::parse(s))
                .collect()
        })
        .transpose()?;
    if a.url.starts_with("grpc://") || a.url.starts_with("grpcs://") {
        let format = a.format.unwrap_or(Format::Raw);
        if !format.is_grpc() {
            bail!("--format {format:?} is for HTTP; over gRPC use raw or typed");
        }
        let target = grpc::target(&a.url, a.ca_cert.as_deref())?;
        target.wait_ready(Duration::from_secs(30)).await?;
        let inputs = match given {
            Some(i) => i,
            None => target.inputs(&a.request.model).await?,
        };
        let request = grpc::request(
            &a.request.model,
            a.request.version.as_deref(),
            &inputs,
            a.request.rows,
            format == Format::Raw,
        )?;
        return Ok((
            format,
            AnyEndpoint::Grpc(Box::new(grpc::GrpcEndpoint {
                target,
                request,
                stream: a.stream,
            })),
        ));
    }
    let format = a.format.unwrap_or(Format::Json);
    if format.is_grpc() || a.stream {
        bail!("--format raw/typed and --stream need a grpc:// or grpcs:// URL");
    }
    let addr = http::resolve(&a.url).await?;
    let tls = match http::tls_host(&a.url) {
        Some(host) => Some(http::Tls::new(
            a.ca_cert
                .as_deref()
                .context("https:// needs --ca-cert FILE")?,
            host,
        )?),
        None => None,
    };
    http::wait_ready_with(addr, tls.as_ref(), Duration::from_secs(30)).await?;
    let inputs = match given {
        Some(i) => i,
        None => {
            let path = format!("/v2/models/{}", a.request.model);
            InputSpec::from_metadata(&http::get_json_with(addr, tls.as_ref(), &path).await?)?
        }
    };
    let request = workload::build(
        &a.request.model,
        a.request.version.as_deref(),
        &inputs,
        a.request.rows,
        format,
    )?;
    Ok((
        format,
        AnyEndpoint::Http(http::HttpEndpoint { addr, request, tls }),
    ))
}

/// HTTP or gRPC, so one run loop drives either.
enum AnyEndpoint {
    Http(http::HttpEndpoint),
    Grpc(Box<grpc::GrpcEndpoint>),
}

enum AnyConn {
    Http(http::HttpConn),
    Grpc(Box<grpc::GrpcConn>),
}

impl crate::endpoint::Endpoint for AnyEndpoint {
    type Conn = AnyConn;

    async fn connect(&self) -> Result<AnyConn> {
        match self {
            AnyEndpoint::Http(e) => e.connect().await.map(AnyConn::Http),
            AnyEndpoint::Grpc(e) => e.connect().await.map(|c| AnyConn::Grpc(Box::new(c))),
        }
    }

    async fn call(&self, conn: &mut AnyConn) -> crate::endpoint::Outcome {
        match (self, conn) {
            (AnyEndpoint::Http(e), AnyConn::Http(c)) => e.call(c).await,
            (AnyEndpoint::Grpc(e), AnyConn::Grpc(c)) => e.call(c).await,
            _ => crate::endpoint::Outcome::failed(crate::endpoint::Status::Io),
        }
    }
}

async fn run(a: RunArgs) -> Result<()> {
    let machine = machine();
    let (format, endpoint) = endpoint(&a).await?;
    let addr = match &endpoint {
        AnyEndpoint::Http(e) => Some(e.addr),
        AnyEndpoint::Grpc(_) => None,
    };
    let endpoint = Arc::new(endpoint);
    // The open-loop rates, then (with --closed) one closed-loop point that
    // finds saturation.
    let open_rates = rates(&a.points.rate, a.points.sweep.as_deref())?;
    let mut rates: Vec<Option<f64>> = open_rates.iter().copied().map(Some).collect();
    if a.closed {
        rates.push(None);
    }
    if rates.is_empty() {
        bail!("give --rate, --sweep or --closed");
    }
    if a.swap.swap_repo.is_some() && (open_rates.len() != 1 || a.closed) {
        bail!("the swap scenario runs at one open-loop --rate");
    }
    if a.swap.swap_repo.is_some() && addr.is_none() {
        bail!("the swap scenario runs over HTTP");
    }
    let slo = Duration::from_secs_f64(a.points.slo_p99_ms / 1e3);
    let mut points = Vec::new();
    let mut swap_report = None;
    let mut stopped = false;
    for rate in &rates {
        if stopped && rate.is_some() {
            continue;
        }
        let plan = Plan {
            rate: *rate,
            connections: a.connections,
            warmup: Duration::from_secs_f64(a.points.warmup),
            duration: Duration::from_secs_f64(a.points.duration),
            timeout: Duration::from_millis(a.points.timeout_ms),
            drain: Duration::from_secs(5),
        };
        let counters = Arc::new(Counters::default());
        let title = rate.map_or(format!("{} closed", a.label), |r| {
            format!("{} {r:.0}/s", a.label)
        });
        let bar = progress::Bar::start(title, plan.length(), Arc::clone(&counters));
        let swapper = a.swap.swap_repo.clone().zip(addr).map(|(repo, swap_addr)| {
            let plan_s = swap_plan(&a, repo);
            let start = std::time::Instant::now();
            (
                start,
                tokio::spawn(swap::run(plan_s, swap_addr, start, plan.warmup)),
            )
        });
        let run = driver::run(Arc::clone(&endpoint), plan, counters).await;
        drop(bar);
        let point = analysis::point(
            &plan,
            &run.samples,
            slo,
            Duration::from_millis(a.points.slice_ms),
        );
        if let Some((swap_start, task)) = swapper {
            let published = task.await??;
            // Swap times are taken from the swapper's clock; shift them to
            // the driver's (they start within microseconds of each other).
            let shift = run.start.saturating_duration_since(swap_start);
            let published: Vec<_> = published
                .into_iter()
                .map(|(v, at, s)| (v, at.saturating_sub(shift), s))
                .collect();
            let window = Duration::from_secs_f64(a.swap.swap_window);
            let at: Vec<Duration> = published.iter().map(|p| p.1).collect();
            let (during, steady) =
                analysis::split_by_events(&run.samples, plan.warmup..plan.length(), &at, window);
            swap_report = Some(SwapReport {
                swaps: swap::events(&published, &run.samples),
                window_s: window.as_secs_f64(),
                during,
                steady,
            });
        }
        eprintln!(
            "quiver-bench: {} offered {} achieved {:.0}/s p50 {:.3} ms p99 {:.3} ms errors {} {}",
            a.label,
            rate.map_or("closed".into(), |r| format!("{r:.0}/s")),
            point.achieved_rps,
            point.latency.p50_us / 1e3,
            point.latency.p99_us / 1e3,
            point.errors.values().sum::<u64>(),
            if point.held { "held" } else { "did not hold" }
        );
        let held = point.held;
        points.push(point);
        if !held
            && !a.points.no_stop
            && rate.is_some()
            && analysis::sweep_over(&points, a.points.patience)
        {
            eprintln!("quiver-bench: stopping the sweep (use --no-stop to go on)");
            stopped = true;
        }
        // Let the server settle between points.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let result = LoadRun {
        swap: swap_report,
        ..LoadRun::new(
            RunShape {
                label: &a.label,
                url: a.url.clone(),
                format,
                request: &a.request,
                timing: &a.points,
                open: !open_rates.is_empty(),
                connections: a.connections,
                client_threads: a.threads,
            },
            machine,
            points,
        )
    };
    write_out(a.out.as_ref(), &ResultFile::Load(Box::new(result.clone())))?;
    let md = report::markdown::render(
        &report::Combined {
            loads: vec![result],
            inprocess: vec![],
            ratios: Default::default(),
            fixed_rate: None,
        },
        &roles_none(),
    );
    emit(&md)
}

fn swap_plan(a: &RunArgs, repository: PathBuf) -> swap::SwapPlan {
    let source = a.swap.swap_source.clone().unwrap_or_else(|| {
        let latest = swap::latest_version(&repository, &a.request.model).unwrap_or(1);
        repository
            .join(&a.request.model)
            .join(latest.to_string())
            .join("model.onnx")
    });
    swap::SwapPlan {
        repository,
        model: a.request.model.clone(),
        source,
        count: a.swap.swaps,
        every: Duration::from_secs_f64(a.swap.swap_every),
        admin_token: a.swap.admin_token.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_are_geometric_and_inclusive() {
        assert_eq!(
            rates(&[], Some("1000:8000:2")).unwrap(),
            vec![1000.0, 2000.0, 4000.0, 8000.0]
        );
        assert_eq!(rates(&[500.0], None).unwrap(), vec![500.0]);
        assert!(rates(&[], Some("1000:8000")).is_err());
        assert!(rates(&[], Some("1000:8000:1")).is_err());
        assert!(rates(&[-1.0], None).is_err());
    }

    #[test]
    fn the_command_line_parses() {
        Cli::try_parse_from([
            "quiver-bench",
            "run",
            "--url",
            "http://127.0.0.1:1",
            "--rate",
            "100,200",
            "--format",
            "binary",
            "--input",
            "x:FP32:-1x4",
        ])
        .unwrap();
        Cli::try_parse_from(["quiver-bench", "report", "a.json", "b.json"]).unwrap();
    }
}
