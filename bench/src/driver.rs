//! Runs one load point against an [`Endpoint`] and returns every request's
//! timings. Open loop: a pacer thread releases request tickets at their due
//! times (see [`crate::schedule`]) to a pool of connections; whichever
//! connection is free takes the next ticket. Closed loop: each connection
//! sends back to back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};

use crate::endpoint::{Endpoint, Outcome, Stages, Status};
use crate::schedule::Schedule;

/// How one point is loaded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Requests per second (open loop), or `None` for closed loop.
    pub rate: Option<f64>,
    pub connections: usize,
    /// Sent but not counted, so connections and caches are warm.
    pub warmup: Duration,
    pub duration: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How long after the last due time answers are still waited for.
    pub drain: Duration,
}

impl Plan {
    pub fn length(&self) -> Duration {
        self.warmup + self.duration
    }
}

/// One request's timings, as offsets from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was due (open loop) or sent (closed loop).
    pub due: Duration,
    pub sent: Duration,
    pub done: Duration,
    pub outcome: Outcome,
}

/// Live counts, for the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    pub done: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
}

/// Everything one point produced.
pub struct Run {
    pub start: Instant,
    pub samples: Vec<Sample>,
}

/// Runs `plan` against `endpoint`.
pub async fn run<E: Endpoint>(endpoint: Arc<E>, plan: Plan, counters: Arc<Counters>) -> Run {
    let start = Instant::now();
    let deadline = start + plan.length() + plan.drain;
    let (tickets, pacer) = match plan.rate {
        Some(rate) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let schedule = Schedule {
                rate,
                length: plan.length(),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let stop_pacer = Arc::clone(&stop);
            let handle = std::thread::Builder::new()
                .name("quiver-bench-pacer".into())
                .spawn(move || pace(schedule, start, tx, &stop_pacer))
                .ok();
            (Some(Arc::new(Mutex::new(rx))), handle.map(|h| (h, stop)))
        }
        None => (None, None),
    };
    let workers: Vec<_> = (0..plan.connections.max(1))
        .map(|_| {
            let w = Worker {
                endpoint: Arc::clone(&endpoint),
                counters: Arc::clone(&counters),
                start,
                deadline,
                timeout: plan.timeout,
            };
            let tickets = tickets.clone();
            let until = start + plan.length();
            tokio::spawn(async move {
                match tickets {
                    Some(t) => w.open_loop(t).await,
                    None => w.closed_loop(until).await,
                }
            })
        })
        .collect();
    drop(tickets);
    let mut samples = Vec::new();
    for w in workers {
        if let Ok(mut s) = w.await {
            samples.append(&mut s);
        }
    }
    if let Some((handle, stop)) = pacer {
        stop.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
    samples.sort_by_key(|s| s.due);
    Run { start, samples }
}

/// The most a ticket is released before its due time.
pub const MAX_EARLY: Duration = Duration::from_micros(200);

/// Releases ticket `i` at its due time. `thread::sleep` wakes late by the
/// kernel's timer slack (tens of microseconds); the pacer learns how late
/// and goes to sleep that much earlier (at most [`MAX_EARLY`]), so requests
/// leave close to their due time with no core spinning between them. A
/// request that leaves early counts as due when it left (see `Worker::one`),
/// so waking early never makes latency look better.
fn pace(
    schedule: Schedule,
    start: Instant,
    tx: mpsc::UnboundedSender<(u64, Instant)>,
    stop: &AtomicBool,
) {
    let mut pacer = Pacer::default();
    for i in 0..schedule.count() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let due = start + schedule.due(i);
        pacer.wait_until(due);
        if tx.send((i, due)).is_err() {
            return;
        }
    }
}

/// Sleeps until a due time, waking early by what the kernel's timer slack
/// has lately made sleeps overrun (see [`pace`]).
pub struct Pacer {
    oversleep: Duration,
}

impl Default for Pacer {
    fn default() -> Pacer {
        Pacer {
            oversleep: Duration::from_micros(50),
        }
    }
}

impl Pacer {
    pub fn wait_until(&mut self, due: Instant) {
        let now = Instant::now();
        if due > now + self.oversleep {
            let want = due - now - self.oversleep;
            let before = Instant::now();
            std::thread::sleep(want);
            let late = before.elapsed().saturating_sub(want);
            // Moving average over ~8 sleeps.
            self.oversleep = ((self.oversleep * 7 + late) / 8).min(MAX_EARLY);
        }
    }
}

struct Worker<E> {
    endpoint: Arc<E>,
    counters: Arc<Counters>,
    start: Instant,
    deadline: Instant,
    timeout: Duration,
}

impl<E: Endpoint> Worker<E> {
    async fn open_loop(
        self,
        tickets: Arc<Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>>,
    ) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut conn = None;
        loop {
            // Idle workers queue on the lock; the holder waits for the next
            // ticket, so tickets go to free connections in order.
            let ticket = tickets.lock().await.recv().await;
            let Some((_, due)) = ticket else { break };
            out.push(self.one(&mut conn, Some(due)).await);
        }
        out
    }

    async fn closed_loop(self, until: Instant) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut conn = None;
        while Instant::now() < until {
            out.push(self.one(&mut conn, None).await);
        }
        out
    }

    /// One call. A request counts as due at its scheduled time or when it
    /// was sent, whichever is earlier: late sends are charged to latency
    /// (coordinated-omission correction), early ones are not credited.
    /// `due` is `None` in closed loop, where a request is due when sent.
    async fn one(&self, conn: &mut Option<E::Conn>, due: Option<Instant>) -> Sample {
        let sent = Instant::now();
        let due = due.map_or(sent, |d| d.min(sent));
        let outcome = if sent >= self.deadline {
            Outcome::failed(Status::Abandoned)
        } else {
            self.counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let limit = (sent + self.timeout).min(self.deadline);
            let o = match tokio::time::timeout_at(limit.into(), self.call(conn)).await {
                Ok(o) => o,
                Err(_) => Outcome::failed(Status::Timeout),
            };
            self.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            o
        };
        if outcome.status.breaks_connection() {
            *conn = None;
        }
        let done = Instant::now();
        self.counters.done.fetch_add(1, Ordering::Relaxed);
        if !outcome.status.is_ok() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        Sample {
            due: due.saturating_duration_since(self.start),
            sent: sent.saturating_duration_since(self.start),
            done: done.saturating_duration_since(self.start),
            outcome,
        }
    }

    async fn call(&self, conn: &mut Option<E::Conn>) -> Outcome {
        if conn.is_none() {
            match self.endpoint.connect().await {
                Ok(c) => *conn = Some(c),
                Err(_) => return Outcome::failed(Status::Connect),
            }
        }
        match conn.as_mut() {
            Some(c) => self.endpoint.call(c).await,
            None => Outcome {
                status: Status::Connect,
                stages: Stages::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint that answers at once, or fails every `fail_every`-th call.
    struct Fake {
        calls: AtomicU64,
        fail_every: u64,
        delay: Duration,
    }

    impl Endpoint for Fake {
        type Conn = ();
        async fn connect(&self) -> anyhow::Result<()> {
            Ok(())
        }
        async fn call(&self, _: &mut ()) -> Outcome {
            tokio::time::sleep(self.delay).await;
            let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
            let code = if n.is_multiple_of(self.fail_every) {
                503
            } else {
                200
            };
            Outcome {
                status: Status::Answered(code),
                stages: Stages::default(),
            }
        }
    }

    fn plan(rate: Option<f64>) -> Plan {
        Plan {
            rate,
            connections: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(400),
            timeout: Duration::from_secs(1),
            drain: Duration::from_secs(1),
        }
    }

    /// Every ticket of the schedule is sent exactly once, in due order, and
    /// due times follow the schedule. (Counts only: no timing assertions.)
    #[tokio::test]
    async fn open_loop_sends_every_ticket_once() {
        let fake = Arc::new(Fake {
            calls: AtomicU64::new(0),
            fail_every: 10,
            delay: Duration::ZERO,
        });
        let counters = Arc::new(Counters::default());
        let run = run(Arc::clone(&fake), plan(Some(200.0)), Arc::clone(&counters)).await;
        let expected = Schedule {
            rate: 200.0,
            length: Duration::from_millis(500),
        };
        assert_eq!(run.samples.len() as u64, expected.count());
        assert_eq!(fake.calls.load(Ordering::Relaxed), expected.count());
        for (i, s) in run.samples.iter().enumerate() {
            // Never later than scheduled, and early by at most MAX_EARLY:
            // bounds of the pacer's logic, whatever the machine's load.
            let due = expected.due(i as u64);
            assert!(s.due <= due && due - s.due <= MAX_EARLY, "{i}: {s:?}");
            assert!(s.sent >= s.due && s.done >= s.sent);
        }
        let errors = run
            .samples
            .iter()
            .filter(|s| !s.outcome.status.is_ok())
            .count();
        assert_eq!(errors, 10);
        assert_eq!(counters.errors.load(Ordering::Relaxed), 10);
        assert_eq!(counters.in_flight.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn closed_loop_stops_at_the_end_of_the_run() {
        let fake = Arc::new(Fake {
            calls: AtomicU64::new(0),
            fail_every: u64::MAX,
            delay: Duration::from_millis(5),
        });
        let run = run(Arc::clone(&fake), plan(None), Arc::default()).await;
        assert!(!run.samples.is_empty());
        assert_eq!(run.samples.len() as u64, fake.calls.load(Ordering::Relaxed));
        assert!(run.samples.iter().all(|s| s.due == s.sent));
    }
}
