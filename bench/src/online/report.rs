//! The summary of a stream run: prequential accuracy, log loss and ROC AUC
//! overall and per serving version; the versions published, promoted and
//! rolled back; and for each documented drift onset, how far accuracy fell
//! and how long it took to recover.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use super::events::{self, Event, Kind};
use super::output::{self, RunInfo};
use super::score::{Scored, Totals, roc_auc};

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    /// The trainer's events logs (JSON lines), if any.
    pub trainer_events: Vec<PathBuf>,
    /// Labelled predictions per accuracy window (recovery, plot).
    pub window: usize,
    /// Recovered: window accuracy back within this of the pre-drift level.
    pub tolerance: f64,
}

/// What happened after one drift onset.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    pub label: String,
    pub row: usize,
    /// Seconds into the run when the onset row was sent.
    pub onset_s: f64,
    /// Accuracy over the window before the onset.
    pub before: Option<f64>,
    /// The lowest window accuracy after it (before the next onset).
    pub lowest: Option<f64>,
    /// Seconds and rows from the onset until window accuracy was back
    /// within the tolerance of `before`; 0 when it never fell out of it,
    /// `None` when it did not come back before the next onset or the end.
    pub recovered_s: Option<f64>,
    pub recovered_rows: Option<u64>,
    /// Seconds from the onset to the first promotion after it.
    pub promoted_after_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionLine {
    pub version: u64,
    pub labelled: u64,
    pub accuracy: Option<f64>,
    pub log_loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: RunInfo,
    pub accuracy: Option<f64>,
    pub log_loss: Option<f64>,
    pub roc_auc: Option<f64>,
    pub versions: Vec<VersionLine>,
    pub published: Vec<u64>,
    pub promoted: Vec<u64>,
    pub rolled_back: Vec<u64>,
    pub drift_detections: usize,
    pub retrains: usize,
    pub recoveries: Vec<Recovery>,
    /// Every event, seconds into the run.
    #[serde(skip)]
    pub timeline: Vec<(f64, Event)>,
    #[serde(skip)]
    pub predictions: Vec<Scored>,
}

/// Accuracy of `preds[a..b]` from prefix sums of correct answers.
fn window_acc(prefix: &[u64], a: usize, b: usize) -> Option<f64> {
    (b > a).then(|| (prefix[b] - prefix[a]) as f64 / (b - a) as f64)
}

pub fn recoveries(
    preds: &[Scored],
    run: &RunInfo,
    timeline: &[(f64, Event)],
    window: usize,
    tol: f64,
) -> Vec<Recovery> {
    let mut prefix = vec![0u64; preds.len() + 1];
    for (i, p) in preds.iter().enumerate() {
        prefix[i + 1] = prefix[i] + u64::from(p.correct());
    }
    let index_of = |row: usize| preds.partition_point(|p| (p.seq as usize) < row);
    let w = window.max(1);
    let mut out = Vec::new();
    for (k, (row, onset_s, label)) in run.onsets.iter().enumerate() {
        let i = index_of(*row);
        let end = run.onsets.get(k + 1).map_or(preds.len(), |n| index_of(n.0));
        let before = window_acc(&prefix, i.saturating_sub(w), i);
        let after: Vec<(usize, f64)> = ((i + w).min(end)..=end)
            .filter(|&j| j >= i + w)
            .filter_map(|j| Some((j, window_acc(&prefix, j - w, j)?)))
            .collect();
        let lowest = after.iter().map(|a| a.1).min_by(f64::total_cmp);
        let (mut recovered_s, mut recovered_rows) = (None, None);
        if let (Some(b), Some(low)) = (before, lowest) {
            if low >= b - tol {
                (recovered_s, recovered_rows) = (Some(0.0), Some(0));
            } else if let Some(jm) = after.iter().position(|a| a.1 == low)
                && let Some((j, _)) = after[jm..].iter().find(|a| a.1 >= b - tol)
            {
                let last = &preds[j - 1];
                recovered_s = Some((last.answered_s - onset_s).max(0.0));
                recovered_rows = Some(last.seq.saturating_sub(*row as u64));
            }
        }
        let promoted_after_s = timeline
            .iter()
            .find(|(t, e)| e.kind == Kind::Promoted && *t >= *onset_s)
            .map(|(t, _)| t - onset_s);
        out.push(Recovery {
            label: label.clone(),
            row: *row,
            onset_s: *onset_s,
            before,
            lowest,
            recovered_s,
            recovered_rows,
            promoted_after_s,
        });
    }
    out
}

fn versions_of(timeline: &[(f64, Event)], kind: Kind) -> Vec<u64> {
    let set: BTreeSet<u64> = timeline
        .iter()
        .filter(|(_, e)| e.kind == kind)
        .filter_map(|(_, e)| e.version)
        .collect();
    set.into_iter().collect()
}

pub fn summarize(opts: &Options) -> Result<Summary> {
    let run = output::read_run(&opts.dir)?;
    let predictions = output::read_predictions(&opts.dir)?;
    let mut all: Vec<Event> = output::read_events(&opts.dir.join(output::EVENTS), |l| {
        serde_json::from_str(l).ok()
    })?;
    for path in &opts.trainer_events {
        match output::read_events(path, events::from_trainer) {
            Ok(e) => all.extend(e),
            Err(e) => eprintln!("quiver-bench stream-report: skipping the trainer's events: {e:#}"),
        }
    }
    let mut timeline: Vec<(f64, Event)> = all
        .into_iter()
        .map(|e| ((e.t_ms as f64 - run.start_ms as f64) / 1e3, e))
        .collect();
    timeline.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut overall = Totals::default();
    for p in &predictions {
        overall.add(p);
    }
    let versions = run
        .by_version
        .iter()
        .map(|(v, t)| VersionLine {
            version: *v,
            labelled: t.n,
            accuracy: t.accuracy(),
            log_loss: t.log_loss(),
        })
        .collect();
    let count = |k: Kind| {
        timeline
            .iter()
            .filter(|(_, e)| e.kind == k && e.source == "trainer")
            .count()
    };
    Ok(Summary {
        accuracy: overall.accuracy(),
        log_loss: overall.log_loss(),
        roc_auc: roc_auc(&predictions),
        versions,
        published: versions_of(&timeline, Kind::Published),
        promoted: versions_of(&timeline, Kind::Promoted),
        rolled_back: versions_of(&timeline, Kind::RolledBack),
        drift_detections: count(Kind::DriftDetected),
        retrains: count(Kind::RetrainStarted).max(count(Kind::RetrainFinished)),
        recoveries: recoveries(&predictions, &run, &timeline, opts.window, opts.tolerance),
        run,
        timeline,
        predictions,
    })
}

fn f(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.4}"))
}

fn list(v: &[u64]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter()
            .map(|x| format!("v{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The summary as Markdown.
pub fn render(s: &Summary, plot: &Path) -> String {
    let r = &s.run;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Stream `{}` through model `{}`\n",
        r.stream, r.model
    );
    let _ = writeln!(
        out,
        "- {} rows in {:.0} s ({:.0} rows/s asked, {:.0} answered/s), label delay {}; {} failed requests",
        r.rows_sent,
        r.seconds,
        r.rate,
        r.achieved_rate,
        r.label_delay,
        r.errors.values().sum::<u64>()
    );
    let _ = writeln!(
        out,
        "- labels: {} released, {} accepted by the gateway, {} failed feedback requests",
        r.labels_sent, r.labels_accepted, r.feedback_errors
    );
    let _ = writeln!(
        out,
        "- prequential (each label scored against the version that served it): accuracy **{}**, log loss **{}**, ROC AUC **{}** over {} labelled predictions",
        f(s.accuracy),
        f(s.log_loss),
        f(s.roc_auc),
        s.predictions.len()
    );
    let _ = writeln!(
        out,
        "- versions published {}, promoted {}, rolled back {}; trainer drift detections {}, retrains {}",
        list(&s.published),
        list(&s.promoted),
        list(&s.rolled_back),
        s.drift_detections,
        s.retrains
    );
    let _ = writeln!(
        out,
        "\n| version | labelled | accuracy | log loss |\n|---|---|---|---|"
    );
    for v in &s.versions {
        let _ = writeln!(
            out,
            "| v{} | {} | {} | {} |",
            v.version,
            v.labelled,
            f(v.accuracy),
            f(v.log_loss)
        );
    }
    if !s.recoveries.is_empty() {
        let _ = writeln!(
            out,
            "\n| drift onset | at | accuracy before | lowest after | recovered after | first promotion after |\n|---|---|---|---|---|---|"
        );
        for d in &s.recoveries {
            let rec = match (d.recovered_s, d.recovered_rows) {
                (Some(secs), Some(rows)) => format!("{secs:.0} s ({rows} rows)"),
                _ => "not recovered".into(),
            };
            let promo = d
                .promoted_after_s
                .map_or("-".into(), |t| format!("{t:.0} s"));
            let _ = writeln!(
                out,
                "| {} (row {}) | {:.0} s | {} | {} | {rec} | {promo} |",
                d.label,
                d.row,
                d.onset_s,
                f(d.before),
                f(d.lowest)
            );
        }
    }
    let _ = writeln!(out, "\nplot: {}", plot.display());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(correct: &[bool]) -> Vec<Scored> {
        correct
            .iter()
            .enumerate()
            .map(|(i, c)| Scored {
                seq: i as u64,
                answered_s: i as f64,
                labelled_s: i as f64,
                version: 1,
                p: 0.9,
                label: u8::from(*c),
            })
            .collect()
    }

    #[test]
    fn recovery_is_measured_from_the_onset_to_the_window_coming_back() {
        // 100 right, 50 wrong from the onset at row 100, then right again.
        let mut c = vec![true; 100];
        c.extend([false; 50]);
        c.extend([true; 200]);
        let p = preds(&c);
        let run = RunInfo {
            onsets: vec![(100, 100.0, "sudden".into())],
            ..RunInfo::default()
        };
        let r = &recoveries(&p, &run, &[], 20, 0.06)[0];
        assert_eq!(r.before, Some(1.0));
        assert_eq!(r.lowest, Some(0.0));
        // Windows of 20 are back within 0.06 of 1.0 once 19 of the last 20 are right.
        assert_eq!(r.recovered_rows, Some(68));
        assert_eq!(r.recovered_s, Some(68.0));
    }

    #[test]
    fn no_drop_is_zero_recovery_and_no_return_is_none() {
        let p = preds(&[true; 100]);
        let run = RunInfo {
            onsets: vec![(50, 50.0, "x".into())],
            ..RunInfo::default()
        };
        assert_eq!(
            recoveries(&p, &run, &[], 10, 0.05)[0].recovered_s,
            Some(0.0)
        );
        let mut c = vec![true; 50];
        c.extend([false; 50]);
        let run = RunInfo {
            onsets: vec![(50, 50.0, "x".into())],
            ..RunInfo::default()
        };
        let r = &recoveries(&preds(&c), &run, &[], 10, 0.05)[0];
        assert_eq!((r.lowest, r.recovered_s), (Some(0.0), None));
    }
}
