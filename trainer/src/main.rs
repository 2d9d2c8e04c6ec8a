//! `quiver-trainer run --config configs/trainer.toml`: the closed loop.
//! `quiver-trainer bootstrap --config … --model m --data d.csv`: train and
//! publish a first version from a CSV, so a demo can start from nothing.
//! `quiver-trainer runs --model m`: the model's training runs, as recorded
//! in the registry.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use quiver_contract::runs::Outcome;
use quiver_registry::Registry;
use quiver_trainer::config::Config;
use quiver_trainer::{csv, metrics, publish, run, runs, trial};

#[derive(Parser)]
#[command(name = "quiver-trainer", version, about = "The Quiver sidecar trainer")]
struct Cli {
    /// The trainer config file.
    #[arg(
        long,
        global = true,
        env = "QUIVER_TRAINER_CONFIG",
        default_value = "configs/trainer.toml"
    )]
    config: PathBuf,
    /// Overrides `model_repository` (a directory or `s3://bucket/prefix`).
    #[arg(long, global = true, env = "QUIVER_TRAINER_MODEL_REPOSITORY")]
    repo: Option<String>,
    /// Overrides `log_dir`.
    #[arg(long, global = true, env = "QUIVER_TRAINER_LOG_DIR")]
    log_dir: Option<PathBuf>,
    /// Overrides `state_dir`.
    #[arg(long, global = true, env = "QUIVER_TRAINER_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Overrides `metrics_addr` (an empty value turns metrics off).
    #[arg(long, global = true, env = "QUIVER_TRAINER_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Overrides `[kafka] brokers` (an empty value selects the local log).
    #[arg(long, global = true, env = "QUIVER_TRAINER_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume, join, monitor, retrain, publish and drive rollouts.
    Run,
    /// Train and publish the next version of `model` from a CSV (header
    /// row; the last column is the label).
    Bootstrap {
        #[arg(long)]
        model: String,
        #[arg(long)]
        data: PathBuf,
    },
    /// Print the training runs recorded in the registry for `model`
    /// (`--json`: the records themselves, one per line).
    Runs {
        #[arg(long)]
        model: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = Config::load(&cli.config)?;
    if let Some(r) = cli.repo {
        config.model_repository = r;
    }
    if let Some(l) = cli.log_dir {
        config.log_dir = l;
    }
    if let Some(s) = cli.state_dir {
        config.state_dir = s;
    }
    if let Some(a) = cli.metrics_addr {
        config.metrics_addr = Some(a).filter(|a| !a.is_empty());
    }
    if let Some(b) = cli.kafka_brokers {
        let kafka = config.kafka.get_or_insert_with(Default::default);
        kafka.brokers = b;
    }
    config.validate()?;
    match cli.command {
        Command::Run => {
            if let Some(addr) = &config.metrics_addr {
                let bound = metrics::serve(addr).with_context(|| format!("metrics on {addr}"))?;
                tracing::info!("metrics on http://{bound}/metrics");
            }
            let mut trainer = run::Trainer::open(config)?;
            tracing::info!("trainer running");
            trainer.run(&Arc::new(AtomicBool::new(false)))?;
        }
        Command::Bootstrap { model, data } => {
            let Some(mc) = config.models.iter().find(|m| m.name == model) else {
                bail!("model '{model}' is not in {}", cli.config.display());
            };
            let (_, dataset) = csv::read(&data)?;
            let repo = Registry::open(&config.model_repository, &config.s3_settings())?;
            let version = publish::next_version(&repo, &model)?;
            let mut ranges = std::collections::BTreeMap::new();
            ranges.insert(
                "csv".to_string(),
                format!(
                    "{} sha256={}",
                    data.display(),
                    quiver_contract::manifest::sha256_file(&data)?
                ),
            );
            let mut record = runs::start(mc, "bootstrap", None, ranges.clone(), dataset.rows());
            let mut lineage = publish::lineage(mc, None, ranges, dataset.rows());
            lineage.run = Some(record.id.clone());
            let meta = publish::metadata(&model, version, &lineage);
            let inputs = trial::Inputs {
                model: mc,
                data: &dataset,
                version,
                metadata: &meta,
                stable: None,
                stable_fresh_from: 0,
                run_id: &record.id,
                runs_dir: run::command_runs_dir(&config, &model),
            };
            let tried = trial::run(&inputs).map(|t| {
                runs::tried(&mut record, &t);
                let why = t.failure();
                t.best.ok_or(why)
            });
            let candidate = match tried {
                Ok(Ok(c)) => c,
                Ok(Err(why)) => {
                    record.outcome = Outcome::Failed {
                        reason: why.clone(),
                    };
                    runs::save(&repo, &record);
                    bail!("no candidate trained: {why}");
                }
                Err(e) => {
                    record.outcome = Outcome::Failed {
                        reason: e.to_string(),
                    };
                    runs::save(&repo, &record);
                    return Err(e.into());
                }
            };
            lineage.rows = candidate.rows as u64;
            let manifest = match publish::publish(&repo, mc, version, &candidate, lineage) {
                Ok(m) => m,
                Err(e) => {
                    record.outcome = Outcome::Failed {
                        reason: e.to_string(),
                    };
                    runs::save(&repo, &record);
                    return Err(e.into());
                }
            };
            record.outcome = Outcome::Published { version };
            runs::save(&repo, &record);
            tracing::info!(
                model, version, rows = candidate.rows, seconds = candidate.seconds,
                examples_per_s = candidate.rows as f64 / candidate.seconds.max(1e-9),
                parity_max_abs = candidate.parity_max_abs, offline = ?manifest.metrics.get("offline"),
                "published"
            );
        }
        Command::Runs { model, json } => {
            let repo = Registry::open(&config.model_repository, &config.s3_settings())?;
            let (records, bad) = quiver_registry::control::read_runs(&repo, &model)?;
            for e in bad {
                tracing::warn!(error = %e, "run record skipped");
            }
            let mut out = std::io::stdout().lock();
            if json {
                for r in &records {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
            } else if records.is_empty() {
                writeln!(out, "no training runs recorded for '{model}'")?;
            } else {
                write!(out, "{}", runs::table(&records))?;
            }
        }
    }
    Ok(())
}
