//! The progress bar on stderr while a point runs (only when stderr is a
//! terminal, so logs in CI stay clean).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::driver::Counters;

const WIDTH: usize = 30;

/// A bar `frac` full, e.g. `[####------]`.
pub fn bar(frac: f64) -> String {
    let filled = (frac.clamp(0.0, 1.0) * WIDTH as f64).round() as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(WIDTH - filled))
}

/// One progress line: a bar for elapsed time, then counts.
pub fn line(title: &str, elapsed: Duration, length: Duration, c: &Counters) -> String {
    let frac = elapsed.as_secs_f64() / length.as_secs_f64().max(1e-9);
    format!(
        "{title} {} {:5.1}/{:.0}s  done {}  errors {}  in flight {}",
        bar(frac),
        elapsed.as_secs_f64().min(length.as_secs_f64()),
        length.as_secs_f64(),
        c.done.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.in_flight.load(Ordering::Relaxed),
    )
}

/// Redraws the line four times a second until dropped.
pub struct Bar {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    pub fn start(title: String, length: Duration, counters: Arc<Counters>) -> Bar {
        if !std::io::stderr().is_terminal() {
            return Bar { task: None };
        }
        let start = Instant::now();
        // Owned by the Bar and aborted when it is dropped.
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let text = line(&title, start.elapsed(), length, &counters);
                let _ = write!(std::io::stderr(), "\r\x1b[2K{text}");
            }
        });
        Bar { task: Some(task) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_time() {
        let c = Counters::default();
        c.done.store(42, Ordering::Relaxed);
        let half = line("x", Duration::from_secs(5), Duration::from_secs(10), &c);
        assert!(
            half.contains(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))),
            "{half}"
        );
        assert!(half.contains("done 42"));
        let over = line("x", Duration::from_secs(12), Duration::from_secs(10), &c);
        assert!(over.contains(&"#".repeat(WIDTH)));
    }
}
