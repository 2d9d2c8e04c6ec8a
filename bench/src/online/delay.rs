//! When a served prediction's label is released to the gateway: the label
//! delay, and the queue of answered predictions waiting for it. Pure (no
//! clock, no tokio): the generator passes the current clock in.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use anyhow::{Context, Result, bail};

/// How late labels arrive.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelDelay {
    /// When the stream's own clock passes the row's `label_time` (a flight's
    /// label on landing, rain the next day).
    Natural,
    /// This many rows of the stream later.
    Rows(u64),
    /// This many seconds of wall time after the answer.
    Seconds(f64),
}

impl LabelDelay {
    /// `natural`, `N` or `Nrows` (rows), `Ns` (seconds, fractions allowed).
    pub fn parse(s: &str) -> Result<LabelDelay> {
        let s = s.trim();
        if s == "natural" {
            return Ok(LabelDelay::Natural);
        }
        if let Some(secs) = s.strip_suffix('s').filter(|r| !r.ends_with("row")) {
            let v: f64 = secs
                .parse()
                .with_context(|| format!("bad label delay '{s}'"))?;
            if v.is_nan() || v < 0.0 || v.is_infinite() {
                bail!("label delay must be ≥ 0 seconds, not {v}");
            }
            return Ok(LabelDelay::Seconds(v));
        }
        let rows = s.strip_suffix("rows").unwrap_or(s);
        rows.parse().map(LabelDelay::Rows).with_context(|| {
            format!("bad label delay '{s}': expected natural, N rows, Nrows or Ns")
        })
    }

    /// The clock value at which the label of a row becomes due, given the
    /// row's index and label time and the wall time of its answer.
    pub fn due(self, seq: u64, label_time: f64, answered_s: f64) -> f64 {
        match self {
            LabelDelay::Natural => label_time,
            LabelDelay::Rows(n) => (seq + n) as f64,
            LabelDelay::Seconds(s) => answered_s + s,
        }
    }

    /// The current clock: the stream time or index of the last row sent, or
    /// the wall time.
    pub fn clock(self, last_sent_seq: u64, last_sent_time: f64, now_s: f64) -> f64 {
        match self {
            LabelDelay::Natural => last_sent_time,
            LabelDelay::Rows(_) => last_sent_seq as f64,
            LabelDelay::Seconds(_) => now_s,
        }
    }
}

struct Entry<T> {
    due: f64,
    /// Insertion order: ties release first in, first out.
    order: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    /// Reversed, so the max-heap pops the earliest due first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .due
            .total_cmp(&self.due)
            .then(other.order.cmp(&self.order))
    }
}

/// Answered predictions waiting for their labels' due clock.
pub struct Pending<T> {
    heap: BinaryHeap<Entry<T>>,
    next: u64,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            heap: BinaryHeap::new(),
            next: 0,
        }
    }
}

impl<T> Pending<T> {
    pub fn push(&mut self, due: f64, item: T) {
        self.heap.push(Entry {
            due,
            order: self.next,
            item,
        });
        self.next += 1;
    }

    /// Everything due at `clock` or before, earliest first.
    pub fn pop_due(&mut self, clock: f64) -> Vec<T> {
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|e| e.due <= clock) {
            if let Some(e) = self.heap.pop() {
                out.push(e.item);
            }
        }
        out
    }

    /// Everything left, earliest first (the end of the stream).
    pub fn drain(&mut self) -> Vec<T> {
        self.pop_due(f64::INFINITY)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse() {
        assert_eq!(LabelDelay::parse("natural").unwrap(), LabelDelay::Natural);
        assert_eq!(LabelDelay::parse("500").unwrap(), LabelDelay::Rows(500));
        assert_eq!(LabelDelay::parse("500rows").unwrap(), LabelDelay::Rows(500));
        assert_eq!(LabelDelay::parse("2.5s").unwrap(), LabelDelay::Seconds(2.5));
        for bad in ["", "x", "-1s", "1.5", "-3"] {
            assert!(LabelDelay::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_release_in_due_order_and_never_early() {
        let mut p = Pending::default();
        let d = LabelDelay::Rows(3);
        for seq in [0u64, 2, 1, 5] {
            p.push(d.due(seq, 0.0, 0.0), seq);
        }
        assert!(p.pop_due(2.0).is_empty());
        assert_eq!(p.pop_due(d.clock(4, 0.0, 0.0)), vec![0, 1]);
        assert_eq!(p.pop_due(5.0), vec![2]);
        assert_eq!(p.len(), 1);
        assert_eq!(p.drain(), vec![5]);
        assert!(p.is_empty());
    }

    #[test]
    fn natural_delay_follows_the_stream_clock() {
        let d = LabelDelay::Natural;
        let mut p = Pending::default();
        p.push(d.due(0, 100.0, 0.0), "landed at 100");
        p.push(d.due(1, 50.0, 0.0), "landed at 50");
        assert_eq!(p.pop_due(d.clock(9, 60.0, 1e9)), vec!["landed at 50"]);
        assert_eq!(p.pop_due(d.clock(10, 100.0, 0.0)), vec!["landed at 100"]);
    }

    #[test]
    fn ties_keep_arrival_order() {
        let mut p = Pending::default();
        for i in 0..10 {
            p.push(1.0, i);
        }
        assert_eq!(p.drain(), (0..10).collect::<Vec<_>>());
    }
}
