//! The traffic generator against the real gateway: a seeded stream of 16
//! features (the example `mlp`'s input) sent by the real `quiver-bench
//! stream` over HTTP, labels released late through the feedback endpoint,
//! every labelled prediction scored by the version that served it. Checks
//! that counts add up, that the scores in the files match the stream's
//! labels and the served probabilities, that two runs of the same seed
//! serve and score the same, and that `stream-report` reads a trainer's
//! events log. No timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};
use quiver_tests::{Gateway, Rng, binary, example_models, scratch};
use serde_json::{Value, json};

const ROWS: usize = 1500;
const FEATURES: usize = 16;

/// A stream CSV in quiver-bench's format: labels from a fixed hyperplane,
/// known 30 rows later; a documented onset at row 1000.
fn write_stream(dir: &Path, seed: u64) -> Result<(std::path::PathBuf, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    let w: Vec<f32> = (0..FEATURES).map(|_| rng.f32()).collect();
    let mut csv = String::from("time,label_time");
    for i in 0..FEATURES {
        write!(csv, ",f{i}")?;
    }
    csv.push_str(",label\n");
    let mut labels = Vec::new();
    for i in 0..ROWS {
        let x: Vec<f32> = (0..FEATURES).map(|_| rng.f32()).collect();
        let label = u8::from(w.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() > 0.0);
        labels.push(label);
        write!(csv, "{i},{}", i + 30)?;
        for v in x {
            write!(csv, ",{v}")?;
        }
        writeln!(csv, ",{label}")?;
    }
    let path = dir.join("seeded.csv");
    std::fs::write(&path, csv)?;
    std::fs::write(
        dir.join("seeded.meta.json"),
        json!({"time_unit": "row", "onsets": [{"row": 1000, "width": 0, "label": "test onset"}]})
            .to_string(),
    )?;
    Ok((path, labels))
}

/// `quiver-bench SUBCOMMAND ARGS...`'s stdout; its stderr on failure.
fn quiver_bench(subcommand: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(binary("quiver-bench")?)
        .arg(subcommand)
        .args(args)
        .output()?;
    match out.status.success() {
        true => Ok(String::from_utf8(out.stdout)?),
        false => bail!("{subcommand}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// (seq, version, p, label) per line of predictions.csv.
fn predictions(dir: &Path) -> Vec<(u64, u64, String, u8)> {
    let text = std::fs::read_to_string(dir.join("predictions.csv")).unwrap();
    let mut rows: Vec<_> = text
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            (
                c[0].parse().unwrap(),
                c[3].parse().unwrap(),
                c[4].to_string(),
                c[5].parse().unwrap(),
            )
        })
        .collect();
    rows.sort_by_key(|r: &(u64, u64, String, u8)| r.0);
    rows
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_seeded_stream_is_served_labelled_late_and_scored_by_version() -> Result<()> {
    let gw = Gateway::start_ready(&example_models(), &[], &[]).await?;
    let dir = scratch("streams")?;
    let (csv, labels) = write_stream(&dir, 11)?;
    let url = format!("http://{}", gw.addr);
    // Scratch paths have no spaces, so the arguments split on whitespace.
    let run = |out: &str| -> Result<(std::path::PathBuf, String)> {
        let out = dir.join(out);
        let args = format!(
            "--stream {} --gateway {url} --model mlp --rate 1500 --label-delay natural \
             --window 200 --connections 4 --out-dir {}",
            csv.display(),
            out.display()
        );
        let md = quiver_bench("stream", &args.split_whitespace().collect::<Vec<_>>())?;
        Ok((out, md))
    };
    let (first, summary) = run("first")?;
    assert!(summary.contains("prequential"), "{summary}");
    assert!(first.join("accuracy.svg").is_file());

    let info = read_json(&first.join("run.json"));
    assert_eq!(info["rows_sent"], ROWS);
    assert_eq!(info["answered"], ROWS, "{info}");
    assert_eq!(info["labels_sent"], ROWS);
    assert_eq!(info["overall"]["n"], ROWS);
    // The onset row was sent, and placed on the run's clock.
    assert_eq!(info["onsets"][0][0], 1000);

    // Each prediction carries its row's label and a served probability.
    let preds = predictions(&first);
    assert_eq!(preds.len(), ROWS);
    let mut by_version: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (i, (seq, version, p, label)) in preds.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(*label, labels[i]);
        let p: f64 = p.parse()?;
        assert!((0.0..=1.0).contains(&p));
        let e = by_version.entry(*version).or_default();
        e.0 += 1;
        e.1 += u64::from(u8::from(p >= 0.5) == *label);
    }
    // Routed to the newest version of the example model; scored by it.
    assert_eq!(by_version.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(info["by_version"]["2"]["n"], ROWS);
    assert_eq!(info["by_version"]["2"]["correct"], by_version[&2].1);

    // Labels went through the feedback endpoint where the gateway has one.
    let probe = gw
        .post_json(
            "/v2/models/mlp/feedback",
            &json!({"labels": [{"id": "s0", "label": 1}]}),
        )
        .await?;
    if probe.status == 200 {
        assert_eq!(info["labels_accepted"], ROWS, "{info}");
        assert_eq!(info["feedback_errors"], 0);
    } else {
        assert!(info["feedback_errors"].as_u64().unwrap() > 0, "{info}");
    }

    // The same seed serves and scores the same.
    let (second, _) = run("second")?;
    assert_eq!(predictions(&second), preds);

    // stream-report marks a trainer's events; unknown events are ignored.
    let start_ms = info["start_ms"].as_u64().unwrap();
    let events = dir.join("trainer-events.jsonl");
    std::fs::write(
        &events,
        format!(
            "{}\n{}\n{}\nnot json\n",
            json!({"ts_ms": start_ms + 100, "event": "published", "version": 3}),
            json!({"ts_ms": start_ms + 200, "event": "promoted", "version": 3}),
            json!({"ts_ms": start_ms + 300, "event": "heartbeat"}),
        ),
    )?;
    let md = quiver_bench(
        "stream-report",
        &[
            "--dir",
            first.to_str().unwrap(),
            "--trainer-events",
            events.to_str().unwrap(),
            "--window",
            "200",
        ],
    )?;
    assert!(md.contains("published v3, promoted v3"), "{md}");
    let s = read_json(&first.join("summary.json"));
    assert_eq!(s["published"], json!([3]));
    assert_eq!(s["recoveries"][0]["row"], 1000);
    Ok(())
}
