//! Defaults that hold on streams nobody tuned for: a concept change in the
//! served errors is reported as a drift and retrains at once, and the
//! training run trains on the rows after it.

use anyhow::{Context, Result};

use super::commands::run_records;
use super::{config, events, local_loop, scratch};

/// 1000 rows of concept A (which version 1 serves well), then concept B
/// until a retrain: the window holds both, the served errors rise at the
/// switch, the change monitor fires long before the 2000 new rows the
/// cadence asks for, and the run trains on the concept B rows only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_training_run_cuts_its_window_at_a_concept_change() -> Result<()> {
    let dir = scratch("cut")?;
    let (gw, mut traffic) = local_loop(&dir).await?;
    let text = std::fs::read_to_string(config(&dir, false, None)?)?
        .replace("window_rows = 1500\n", "window_rows = 4000\n")
        .replace("new_rows = 800\n", "new_rows = 2000\n");
    let cfg = dir.join("cut.toml");
    std::fs::write(&cfg, text)?;
    traffic.drifted = false;
    traffic.send(&gw, 1000, false).await?;
    traffic.drifted = true;
    let cut = || {
        events(&dir)
            .into_iter()
            .find(|e| e["event"] == "window_cut")
    };
    traffic
        .with_trainer(&gw, &dir, (&cfg, "a"), "a retrain", || {
            events(&dir)
                .iter()
                .any(|e| e["event"] == "retrain_finished" || e["event"] == "retrain_failed")
        })
        .await?;
    let c = cut().context("no window cut")?;
    let at = c["at"].as_u64().context("at")?;
    // The first 1000 rows joined are concept A; a few of B may look alike.
    assert!((950..=1060).contains(&at), "{c}");
    assert!(c["error_before"].as_f64() < Some(0.1), "{c}");
    assert!(c["error_after"].as_f64() > Some(0.3), "{c}");
    let after = c["rows_after"].as_u64().context("rows_after")?;
    let run = run_records(&dir)?
        .into_iter()
        .find(|r| r.trigger.contains("window cut at a change"))
        .context("no run record of the cut")?;
    assert_eq!(run.rows, after, "{run:#?}");
    assert!(after >= 200, "{c}");
    let drift = events(&dir)
        .into_iter()
        .find(|e| e["event"] == "drift_detected")
        .with_context(|| format!("no drift detected: {:#?}", events(&dir)))?;
    assert!(drift["error_after"].as_f64() > Some(0.3), "{drift}");
    assert!(run.trigger.starts_with("concept change"), "{}", run.trigger);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
