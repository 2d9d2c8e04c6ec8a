//! When each request is meant to be sent, and what latency means.
//!
//! Open loop: request `i` is due at `i / rate` after the start, whatever
//! happened to earlier requests. Its latency is measured from that
//! *intended* time, not from when a connection got round to sending it: if
//! the server stalls for a second, every request due in that second is
//! charged the time it waited, so the stall shows in the percentiles instead
//! of being hidden by a load generator that politely stopped sending
//! ("coordinated omission"). Closed loop has no schedule: each connection
//! sends its next request when the previous answer arrives, and latency is
//! from the actual send.

use std::time::Duration;

/// A constant-rate arrival schedule, as offsets from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// How long requests are issued for (warm-up included).
    pub length: Duration,
}

impl Schedule {
    /// The offset at which request `i` is due.
    pub fn due(&self, i: u64) -> Duration {
        // Computed from `i` each time rather than by adding intervals, so
        // rounding never accumulates into drift over a long run.
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How many requests the schedule issues in total.
    pub fn count(&self) -> u64 {
        (self.length.as_secs_f64() * self.rate).ceil() as u64
    }
}

/// Latency of a request due at `intended` that was answered at `done`
/// (offsets from the start). A request answered "before" it was due (the
/// sender woke a few microseconds early) counts as zero, not negative.
pub fn latency(intended: Duration, done: Duration) -> Duration {
    done.saturating_sub(intended)
}

/// How the driver uses one connection, modelled without I/O so the open-loop
/// rules can be tested: requests are taken in schedule order by whichever of
/// `connections` is free first, sent at `max(due, connection free)`, and
/// take `service(i)` each. Returns `(sent, done)` offsets per request.
pub fn simulate(
    schedule: &Schedule,
    connections: usize,
    service: impl Fn(u64) -> Duration,
) -> Vec<(Duration, Duration)> {
    let mut free = vec![Duration::ZERO; connections.max(1)];
    (0..schedule.count())
        .map(|i| {
            let due = schedule.due(i);
            let (slot, at) = free
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|&(_, t)| t)
                .unwrap_or((0, Duration::ZERO));
            let sent = due.max(at);
            let done = sent + service(i);
            free[slot] = done;
            (sent, done)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::Latencies;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn requests_are_evenly_spaced_and_counted() {
        let s = Schedule {
            rate: 1_000.0,
            length: Duration::from_secs(3),
        };
        assert_eq!(s.count(), 3_000);
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), MS);
        assert_eq!(s.due(2_999), Duration::from_millis(2_999));
        // No drift after many intervals of a rate with no exact binary form.
        let odd = Schedule {
            rate: 3.0,
            length: Duration::from_secs(1_000),
        };
        assert_eq!(odd.due(3_000), Duration::from_secs(1_000));
    }

    #[test]
    fn fractional_counts_round_up() {
        let s = Schedule {
            rate: 2.5,
            length: Duration::from_secs(1),
        };
        // Due at 0 s, 0.4 s and 0.8 s.
        assert_eq!(s.count(), 3);
    }

    #[test]
    fn early_answers_count_as_zero() {
        assert_eq!(latency(MS * 5, MS * 4), Duration::ZERO);
        assert_eq!(latency(MS * 5, MS * 7), MS * 2);
    }

    #[test]
    fn a_fast_server_sends_everything_on_time() {
        let s = Schedule {
            rate: 100.0,
            length: Duration::from_secs(1),
        };
        for (i, (sent, done)) in simulate(&s, 1, |_| MS).into_iter().enumerate() {
            assert_eq!(sent, s.due(i as u64));
            assert_eq!(latency(s.due(i as u64), done), MS);
        }
    }

    /// The classic demonstration: one connection, 1 ms answers at 100 req/s
    /// for 10 s, except that request 500 stalls for 1 s. Measured from the
    /// send, only one request of 1 000 looks slow and p99 stays at 1 ms.
    /// Measured from the intended time, every request due during the stall
    /// waited for it, and p99 shows it.
    #[test]
    fn a_stall_is_charged_to_every_request_due_during_it() {
        let s = Schedule {
            rate: 100.0,
            length: Duration::from_secs(10),
        };
        let stall = Duration::from_secs(1);
        let runs = simulate(&s, 1, |i| if i == 500 { stall } else { MS });
        let mut naive = Latencies::new();
        let mut corrected = Latencies::new();
        for (i, &(sent, done)) in runs.iter().enumerate() {
            naive.record_ns((done - sent).as_nanos() as u64);
            corrected.record_ns(latency(s.due(i as u64), done).as_nanos() as u64);
        }
        let (naive, corrected) = (naive.summary(), corrected.summary());
        assert!((naive.p99_us - 1_000.0).abs() < 2.0, "{naive:?}");
        assert!((naive.max_us - 1_000_000.0).abs() < 1_000.0, "{naive:?}");
        // 100 requests were due during the stall, waiting 1 s, 0.99 s, ...:
        // 10 % of the run, so p90 and everything above is in the stall.
        assert!(corrected.p99_us > 900_000.0, "{corrected:?}");
        assert!(corrected.p90_us > 10_000.0, "{corrected:?}");
        assert!(corrected.p50_us < 1_100.0, "{corrected:?}");
        // After the stall the backlog drains and requests are on time again.
        let last = runs.len() - 1;
        assert_eq!(runs[last].0, s.due(last as u64));
    }

    #[test]
    fn more_connections_absorb_a_stall() {
        let s = Schedule {
            rate: 100.0,
            length: Duration::from_secs(10),
        };
        let runs = simulate(
            &s,
            2,
            |i| if i == 500 { Duration::from_secs(1) } else { MS },
        );
        let late = runs
            .iter()
            .enumerate()
            .filter(|&(i, &(_, done))| latency(s.due(i as u64), done) > MS * 2)
            .count();
        // Only the stalled request itself is late: the second connection
        // keeps the schedule while the first is stuck.
        assert_eq!(late, 1);
    }

    #[test]
    fn an_overloaded_server_makes_latency_grow_without_bound() {
        // Service takes 2 ms but requests come every 1 ms on one connection:
        // the queue grows linearly, and so does the latency of the last one.
        let s = Schedule {
            rate: 1_000.0,
            length: Duration::from_secs(1),
        };
        let runs = simulate(&s, 1, |_| MS * 2);
        let last = runs.len() - 1;
        let lat = latency(s.due(last as u64), runs[last].1);
        assert!(lat > Duration::from_millis(990), "{lat:?}");
    }
}
