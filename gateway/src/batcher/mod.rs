//! The dynamic batcher of one model version: a bounded queue and a pool of
//! backend sessions (the version's instances). Whoever holds a free
//! backend asks the policy for the next batch, concatenates the requests
//! along the batch dimension, runs the engine, and splits the outputs back.
//!
//! Two kinds of thread do that. Each instance has its own thread, which
//! waits for work. And for a cheap model (its measured compute within
//! `inline_max`) the request's own thread does it: a request that finds a
//! backend free takes the batch the policy releases and runs it at once,
//! and after its batch it keeps taking the batches that queued meanwhile,
//! within the same time budget, before it gives the backend back. Under
//! load (requests have met a busy model in the last [`LEAD_HOLD`]) the
//! request that finds the engine free becomes the batch's *leader*
//! instead: its task yields once, so that its thread reads the other
//! requests already waiting on its connections, and then runs everything
//! queued as one batch. That is how batches form with no thread hop at
//! all. Instance threads are woken only for work no request thread will
//! take (an expensive model, a queue the budget does not cover, a shadow
//! copy).

pub mod policy;

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::backend::{Backend, BackendError};
use crate::error::InferError;
use crate::metrics::VersionMetrics;
use crate::model::ModelSpec;
use crate::tensor::{Tensor, TensorData, element_count};
use policy::{BatchLimits, BatchQueue, Dropped, Next, Queued};

/// The answer to one job.
#[derive(Debug)]
pub struct JobOutput {
    /// Every model output, in the model's order, cut to this job's rows.
    pub outputs: Vec<Tensor>,
    pub queue_time: Duration,
    pub compute_time: Duration,
    /// Rows in the batch this job ran in.
    pub batch_rows: usize,
    /// When the batch left the queue.
    pub batch_started: Instant,
    /// The job's inputs, handed back when it asked for them
    /// ([`Job::keep_inputs`]); empty otherwise.
    pub inputs: Vec<Tensor>,
}

pub type Reply = Result<JobOutput, InferError>;

/// One admitted request waiting for the model.
pub struct Job {
    /// In the model's input order, already checked against its spec.
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    pub enqueued_at: Instant,
    pub deadline: Option<Instant>,
    /// Its priority level, 1 the highest.
    pub priority: u32,
    /// Hand the inputs back with the answer (the prediction log records
    /// them). A batch of several jobs copies them into its own tensors, so
    /// they come back at no cost; a job run alone gives its tensors to the
    /// engine, so only then are they copied.
    pub keep_inputs: bool,
    pub reply: oneshot::Sender<Reply>,
}

impl Queued for Job {
    fn rows(&self) -> usize {
        self.rows
    }
    fn enqueued_at(&self) -> Instant {
        self.enqueued_at
    }
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
    fn priority(&self) -> u32 {
        self.priority
    }
    fn fits_with(&self, head: &Self) -> bool {
        self.inputs
            .iter()
            .zip(&head.inputs)
            .all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

struct State {
    queue: BatchQueue<Job>,
    /// Backends free to run a batch, for the instance threads and for
    /// inline runs.
    idle: Vec<Box<dyn Backend>>,
    /// Batches running now, on instance threads or inline.
    busy: usize,
    closed: bool,
    /// Compute time per row of recent batches, in nanoseconds (a moving
    /// average; 0 until measured). Per row of small batches it includes
    /// the engine's fixed cost per call, so it over-estimates big ones:
    /// the safe side for deciding what a request's thread may run.
    row_cost_ns: u64,
    /// A request's task holds the right to run the next batch (it is
    /// yielding so that more requests join); nobody else starts one.
    leader: bool,
    /// When a request last found the model busy or work queued.
    contended_at: Option<Instant>,
    /// How long after that requests lead batches ([`LEAD_HOLD`]).
    lead_hold: Duration,
}

impl State {
    fn learn(&mut self, compute: Duration, rows: usize) {
        let sample = (compute.as_nanos() / rows.max(1) as u128).min(u128::from(u64::MAX)) as u64;
        self.row_cost_ns = match self.row_cost_ns {
            0 => sample.max(1),
            old => (old.saturating_mul(7).saturating_add(sample) / 8).max(1),
        };
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    spec: Arc<ModelSpec>,
    metrics: VersionMetrics,
    /// Work runs on a request's thread when the estimated compute of the
    /// largest batch it could take is at most this; `None`: never.
    inline_max: Option<Duration>,
}

/// Answers what the policy took out of the queue (outside the lock).
fn answer_dropped(shared: &Shared, dropped: &mut Vec<(Job, Dropped)>) {
    for (job, why) in dropped.drain(..) {
        match why {
            Dropped::Expired => {
                shared.metrics.expired.increment(1);
                let _ = job.reply.send(Err(InferError::Expired));
            }
            Dropped::Cancelled => shared.metrics.cancelled.increment(1),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock is a bug elsewhere; the queue's
        // contents are still consistent, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request's thread may take what is queued now: the model's
    /// cost is measured and the largest batch the queue could release fits
    /// the inline budget.
    fn cheap_enough(&self, state: &State) -> bool {
        let Some(max) = self.inline_max else {
            return false;
        };
        let rows = state.queue.rows().min(state.queue.limits().max_rows);
        state.row_cost_ns > 0 && u128::from(state.row_cost_ns) * rows as u128 <= max.as_nanos()
    }

    /// Gives a backend back after a batch and lets a waiting thread on.
    fn release(&self, mut state: MutexGuard<'_, State>, backend: Box<dyn Backend>) {
        state.idle.push(backend);
        state.busy -= 1;
        self.metrics.busy_instances.set(state.busy as f64);
        // A pending leader takes the queue itself.
        let (waiting, closed) = (!state.queue.is_empty() && !state.leader, state.closed);
        drop(state);
        if closed {
            // Threads waiting for a backend must see the end too.
            self.wake.notify_all();
        } else if waiting {
            self.wake.notify_one();
        }
    }
}

/// Why a job was not queued; the job comes back so its reply can be used.
pub enum Rejected {
    Full(Job),
    Closed(Job),
}

pub struct Batcher {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Batcher {
    /// Starts one thread per backend (model instance). `inline_max`: the
    /// most estimated compute a request may run for on the submitting
    /// thread when nothing is queued (`None`: always through the queue).
    pub fn start(
        spec: Arc<ModelSpec>,
        backends: Vec<Box<dyn Backend>>,
        limits: BatchLimits,
        metrics: VersionMetrics,
        inline_max: Option<Duration>,
    ) -> std::io::Result<Batcher> {
        metrics.queue_depth.set(0.0);
        metrics.busy_instances.set(0.0);
        let instances = backends.len();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: BatchQueue::new(limits),
                idle: backends,
                busy: 0,
                closed: false,
                row_cost_ns: 0,
                leader: false,
                contended_at: None,
                lead_hold: LEAD_HOLD,
            }),
            wake: Condvar::new(),
            spec,
            metrics,
            inline_max,
        });
        let mut threads = Vec::with_capacity(instances);
        for i in 0..instances {
            let mine = Arc::clone(&shared);
            let name = format!("quiver-{}-v{}-{i}", shared.spec.name, shared.spec.version);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || instance_loop(&mine));
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let b = Batcher {
                        shared,
                        threads: Mutex::new(threads),
                    };
                    b.close();
                    b.join();
                    return Err(e);
                }
            }
        }
        Ok(Batcher {
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Queues `job`; a full queue hands it back at once. When the model is
    /// cheap and a backend is free, the caller runs the batch itself: at
    /// once when the model is quiet (before this returns, no thread hop at
    /// all), or, under load, as the batch's [`Leader`] after its task has
    /// yielded once. The answer goes to the job's reply either way.
    pub fn submit(&self, job: Job) -> Result<Submitted<'_>, Rejected> {
        self.push(job, true)
    }

    /// Queues `job` without running anything on this thread.
    pub fn enqueue(&self, job: Job) -> Result<(), Rejected> {
        self.push(job, false).map(|_| ())
    }

    fn push(&self, job: Job, inline: bool) -> Result<Submitted<'_>, Rejected> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.closed {
            return Err(Rejected::Closed(job));
        }
        let now = Instant::now();
        if state.busy > 0 || !state.queue.is_empty() || state.leader {
            state.contended_at = Some(now);
        }
        state.queue.push(job).map_err(Rejected::Full)?;
        let mut dropped = Vec::new();
        if inline && !state.leader && !state.idle.is_empty() && shared.cheap_enough(&state) {
            let quiet = state
                .contended_at
                .is_none_or(|t| now.saturating_duration_since(t) >= state.lead_hold);
            if !quiet {
                state.leader = true;
                return Ok(Submitted::Lead(Leader {
                    shared,
                    done: false,
                }));
            }
            if let Some(run) = take_batch(shared, &mut state, now, &mut dropped) {
                drop(state);
                answer_dropped(shared, &mut dropped);
                run_inline(shared, run);
                return Ok(Submitted::Queued);
            }
        }
        shared.metrics.queue_depth.set(state.queue.len() as f64);
        let wake = instance_can_take(&state);
        drop(state);
        answer_dropped(shared, &mut dropped);
        if wake {
            shared.wake.notify_one();
        }
        Ok(Submitted::Queued)
    }

    pub fn capacity(&self) -> usize {
        self.shared.lock().queue.limits().capacity
    }

    pub fn queue_len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Stops taking jobs. Queued jobs still run; the threads end once the
    /// queue is empty.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }

    /// Waits for the instance threads to end (after [`Batcher::close`]).
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.join().is_err() {
                tracing::error!(model = %self.shared.spec.name, version = self.shared.spec.version, "instance thread panicked");
            }
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Threads drain the queue and exit on their own; nobody waits.
        self.close();
    }
}

/// What [`Batcher::submit`] did with a job.
pub enum Submitted<'a> {
    /// Queued, or already run: its reply will come.
    Queued,
    /// Queued, and the caller leads the next batch: yield once, then
    /// [`Leader::run`].
    Lead(Leader<'a>),
}

/// The right to run the next batch on a request's thread. Dropped without
/// running (its request gave up), it passes the work to an instance.
pub struct Leader<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Leader<'_> {
    /// Runs what is queued (this leader's job, and everything that joined
    /// it) on this thread, if the model is still cheap and a backend free;
    /// otherwise leaves it to whoever frees one, or to an instance.
    pub fn run(mut self) {
        self.done = true;
        let shared = self.shared;
        let mut state = shared.lock();
        state.leader = false;
        let mut dropped = Vec::new();
        let run = if shared.cheap_enough(&state) {
            take_batch(shared, &mut state, Instant::now(), &mut dropped)
        } else {
            None
        };
        let wake = run.is_none() && instance_can_take(&state);
        drop(state);
        answer_dropped(shared, &mut dropped);
        if let Some(run) = run {
            run_inline(shared, run);
        } else if wake {
            shared.wake.notify_one();
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.shared.lock();
        state.leader = false;
        let wake = instance_can_take(&state);
        drop(state);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

/// Whether an instance thread has something to do: a backend is free and
/// work is queued that no leader has claimed.
fn instance_can_take(state: &State) -> bool {
    !state.leader && !state.idle.is_empty() && !state.queue.is_empty()
}

/// With a free backend, takes the batch the policy releases now, with
/// that backend, for the calling thread.
fn take_batch(
    shared: &Shared,
    state: &mut State,
    now: Instant,
    dropped: &mut Vec<(Job, Dropped)>,
) -> Option<(Vec<Job>, Box<dyn Backend>)> {
    if state.idle.is_empty() {
        return None;
    }
    let others_busy = state.busy > 0;
    let Next::Batch(batch) = state.queue.next(now, others_busy, dropped) else {
        return None;
    };
    let backend = state.idle.pop()?;
    state.busy += 1;
    shared.metrics.queue_depth.set(state.queue.len() as f64);
    shared.metrics.busy_instances.set(state.busy as f64);
    Some((batch, backend))
}

/// After a request found the model busy, how long the next request that
/// finds it free leads a batch (yields once first) instead of running
/// alone at once. A quiet model goes back to running each request as it
/// comes.
const LEAD_HOLD: Duration = Duration::from_millis(2);

/// A backend lent to a request's thread; given back even if a run panics.
struct Lease<'a> {
    shared: &'a Shared,
    backend: Option<Box<dyn Backend>>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(backend) = self.backend.take() {
            self.shared.release(self.shared.lock(), backend);
        }
    }
}

/// Runs `batch` on the caller's thread, then the batches the policy
/// releases after it, while the time spent here stays within the inline
/// budget and the queue stays cheap; then gives the backend back (waking
/// an instance thread for what is left).
fn run_inline(shared: &Shared, (mut batch, backend): (Vec<Job>, Box<dyn Backend>)) {
    let started = Instant::now();
    let budget = shared.inline_max.unwrap_or_default();
    let mut lease = Lease {
        shared,
        backend: Some(backend),
    };
    let mut dropped = Vec::new();
    loop {
        let Some(backend) = lease.backend.as_mut() else {
            return;
        };
        let rows = batch.iter().map(|j| j.rows).sum();
        let compute = run_batch(shared, backend.as_mut(), batch);
        let mut state = shared.lock();
        state.learn(compute, rows);
        let now = Instant::now();
        let more = !state.closed
            && now.saturating_duration_since(started) < budget
            && shared.cheap_enough(&state);
        let others_busy = state.busy > 1;
        let next = if more {
            state.queue.next(now, others_busy, &mut dropped)
        } else {
            Next::Empty
        };
        match next {
            Next::Batch(next) => {
                shared.metrics.queue_depth.set(state.queue.len() as f64);
                drop(state);
                answer_dropped(shared, &mut dropped);
                batch = next;
            }
            _ => {
                if let Some(backend) = lease.backend.take() {
                    shared.release(state, backend);
                }
                answer_dropped(shared, &mut dropped);
                return;
            }
        }
    }
}

fn instance_loop(shared: &Shared) {
    let mut dropped = Vec::new();
    loop {
        let work = {
            let mut state = shared.lock();
            loop {
                let Some(backend) = state.idle.pop() else {
                    // Every backend is busy (some inline): wait for one.
                    if state.closed && state.queue.is_empty() {
                        return;
                    }
                    state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                    continue;
                };
                let busy = state.busy > 0;
                match state.queue.next(Instant::now(), busy, &mut dropped) {
                    Next::Batch(batch) => {
                        state.busy += 1;
                        shared.metrics.queue_depth.set(state.queue.len() as f64);
                        shared.metrics.busy_instances.set(state.busy as f64);
                        break Some((batch, backend));
                    }
                    _ if !dropped.is_empty() => {
                        state.idle.push(backend);
                        break None;
                    }
                    Next::Empty if state.closed => {
                        // The session is freed on this thread, not on
                        // whoever drops the batcher last.
                        drop(state);
                        drop(backend);
                        return;
                    }
                    Next::Empty => {
                        state.idle.push(backend);
                        state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner())
                    }
                    Next::WaitUntil(t) => {
                        state.idle.push(backend);
                        let timeout = t.saturating_duration_since(Instant::now());
                        state = shared
                            .wake
                            .wait_timeout(state, timeout)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
        };
        // Answers go out without the lock held.
        answer_dropped(shared, &mut dropped);
        let Some((batch, mut backend)) = work else {
            continue;
        };
        let rows = batch.iter().map(|j| j.rows).sum();
        let compute = run_batch(shared, backend.as_mut(), batch);
        let mut state = shared.lock();
        state.learn(compute, rows);
        // Wakes an instance waiting for this one to finish, if work waits.
        shared.release(state, backend);
    }
}

/// Runs one batch and answers each of its jobs; returns the compute time.
fn run_batch(shared: &Shared, backend: &mut dyn Backend, mut batch: Vec<Job>) -> Duration {
    let started = Instant::now();
    let rows: usize = batch.iter().map(|j| j.rows).sum();
    let inputs = if batch.len() == 1 {
        batch
            .first_mut()
            .map(|j| {
                if j.keep_inputs {
                    j.inputs.clone()
                } else {
                    std::mem::take(&mut j.inputs)
                }
            })
            .unwrap_or_default()
    } else {
        concatenate(&batch, rows)
    };
    let result = backend.run(inputs);
    let compute_time = started.elapsed();
    shared
        .metrics
        .compute_duration
        .record(compute_time.as_secs_f64());
    shared.metrics.batch_size.record(rows as f64);
    shared.metrics.totals.batch(rows, compute_time);
    let outputs = result.and_then(|outputs| split(outputs, &batch, rows, shared.spec.is_batched()));
    match outputs {
        Ok(per_job) => {
            for (job, outputs) in batch.into_iter().zip(per_job) {
                let queue_time = started.saturating_duration_since(job.enqueued_at);
                shared
                    .metrics
                    .queue_duration
                    .record(queue_time.as_secs_f64());
                shared.metrics.totals.queue.add(queue_time);
                let _ = job.reply.send(Ok(JobOutput {
                    outputs,
                    queue_time,
                    compute_time,
                    batch_rows: rows,
                    batch_started: started,
                    inputs: if job.keep_inputs {
                        job.inputs
                    } else {
                        Vec::new()
                    },
                }));
            }
        }
        Err(e) => {
            tracing::warn!(model = %shared.spec.name, version = shared.spec.version, batch_size = rows, error = %e, "batch failed");
            for job in batch {
                let _ = job.reply.send(Err(InferError::Backend(e.clone())));
            }
        }
    }
    compute_time
}

/// Concatenates each input along the batch dimension, in job order.
fn concatenate(batch: &[Job], rows: usize) -> Vec<Tensor> {
    let Some(head) = batch.first() else {
        return Vec::new();
    };
    head.inputs
        .iter()
        .enumerate()
        .map(|(i, first)| {
            let mut shape = first.shape.clone();
            if let Some(d) = shape.first_mut() {
                *d = rows as i64;
            }
            let mut data = TensorData::empty(first.datatype(), element_count(&shape).unwrap_or(0));
            for job in batch {
                if let Some(t) = job.inputs.get(i) {
                    // Same datatype by admission; `fits_with` checked the rest.
                    data.extend_from(&t.data);
                }
            }
            Tensor {
                name: first.name.clone(),
                shape,
                data,
            }
        })
        .collect()
}

/// Splits each output back into one piece per job.
fn split(
    outputs: Vec<Tensor>,
    batch: &[Job],
    rows: usize,
    batched: bool,
) -> Result<Vec<Vec<Tensor>>, BackendError> {
    if batch.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut per_job: Vec<Vec<Tensor>> = batch
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for out in outputs {
        let first = out.shape.first().copied().unwrap_or(0);
        if !batched || first != rows as i64 {
            return Err(BackendError::Run(format!(
                "output '{}' has first dimension {first}, but the batch has {rows} rows",
                out.name
            )));
        }
        let per_row = out.data.len() / rows.max(1);
        let mut offset = 0;
        for (job, dest) in batch.iter().zip(per_job.iter_mut()) {
            let mut shape = out.shape.clone();
            shape[0] = job.rows as i64;
            let data = out
                .data
                .slice(offset * per_row, (offset + job.rows) * per_row);
            offset += job.rows;
            dest.push(Tensor {
                name: out.name.clone(),
                shape,
                data,
            });
        }
    }
    Ok(per_job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TensorSpec;
    use crate::tensor::DataType;

    /// Doubles its one FP32 input and records the batch sizes it saw.
    struct Doubler {
        seen: Arc<Mutex<Vec<usize>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Backend for Doubler {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            let (lock, cv) = &*self.gate;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            drop(open);
            let x = &inputs[0];
            self.seen.lock().unwrap().push(x.shape[0] as usize);
            let TensorData::Fp32(v) = &x.data else {
                panic!()
            };
            Ok(vec![Tensor {
                name: "y".into(),
                shape: x.shape.clone(),
                data: TensorData::Fp32(v.iter().map(|a| a * 2.0).collect()),
            }])
        }
    }

    fn spec() -> Arc<ModelSpec> {
        let t = |n: &str| TensorSpec {
            name: n.into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 2],
        };
        Arc::new(ModelSpec {
            name: "m".into(),
            version: 1,
            inputs: vec![t("x")],
            outputs: vec![t("y")],
            max_batch_size: 8,
            unbatched: None,
            class_labels: Vec::new(),
        })
    }

    /// A batcher of one `backend` instance, at most 8 rows a batch.
    fn one_instance(
        backend: impl Backend + 'static,
        max_queue_delay: Duration,
        capacity: usize,
        inline_max: Option<Duration>,
    ) -> Batcher {
        let limits = BatchLimits {
            max_rows: 8,
            max_queue_delay,
            preferred: vec![],
            capacity,
            priority_levels: 1,
            max_priority_wait: Duration::from_secs(1),
        };
        Batcher::start(
            spec(),
            vec![Box::new(backend)],
            limits,
            VersionMetrics::new("m", 1),
            inline_max,
        )
        .unwrap()
    }

    fn job(rows: usize, base: f32) -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let data = (0..rows * 2).map(|i| base + i as f32).collect();
        let input = Tensor {
            name: "x".into(),
            shape: vec![rows as i64, 2],
            data: TensorData::Fp32(data),
        };
        (
            Job {
                inputs: vec![input],
                rows,
                enqueued_at: Instant::now(),
                deadline: None,
                priority: 1,
                keep_inputs: true,
                reply: tx,
            },
            rx,
        )
    }

    /// A batcher with one gated `Doubler` instance: nothing runs until
    /// `open` is called. Returns the batcher, the batch sizes it ran, and
    /// the opener.
    fn gated(
        max_queue_delay: Duration,
        capacity: usize,
    ) -> (Batcher, Arc<Mutex<Vec<usize>>>, impl Fn()) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let backend = Doubler {
            seen: Arc::clone(&seen),
            gate: Arc::clone(&gate),
        };
        let b = one_instance(backend, max_queue_delay, capacity, None);
        let open = move || {
            let (lock, cv) = &*gate;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        };
        (b, seen, open)
    }

    /// Submits a job and waits until the instance has taken it.
    fn submit_and_wait_taken(b: &Batcher, rows: usize) -> oneshot::Receiver<Reply> {
        let (j, rx) = job(rows, 0.0);
        b.submit(j).ok().unwrap();
        while b.queue_len() > 0 {
            std::thread::yield_now();
        }
        rx
    }

    /// While the one instance is held busy, queued jobs collect; released,
    /// they run as one batch and each gets its own rows back, and its
    /// inputs when it asked for them (a job run alone gets a copy).
    #[test]
    fn queued_jobs_batch_and_split_back() {
        let (b, seen, open) = gated(Duration::from_millis(1), 16);
        let first_rx = submit_and_wait_taken(&b, 1);
        let mut rxs = Vec::new();
        for (i, rows) in [1usize, 3, 2].into_iter().enumerate() {
            let base = 100.0 * (i + 1) as f32;
            let (mut j, rx) = job(rows, base);
            j.keep_inputs = i != 1;
            let sent = j.inputs.clone();
            b.submit(j).ok().unwrap();
            rxs.push((rows, base, rx, (i != 1).then_some(sent)));
        }
        open();
        let first = first_rx.blocking_recv().unwrap().unwrap();
        assert_eq!(first.batch_rows, 1);
        assert_eq!(first.inputs[0].data, TensorData::Fp32(vec![0.0, 1.0]));
        for (rows, base, rx, sent) in rxs {
            let out = rx.blocking_recv().unwrap().unwrap();
            assert_eq!(out.batch_rows, 6);
            assert_eq!(out.inputs, sent.unwrap_or_default());
            let want: Vec<f32> = (0..rows * 2).map(|i| 2.0 * (base + i as f32)).collect();
            assert_eq!(out.outputs[0].data, TensorData::Fp32(want));
            assert_eq!(out.outputs[0].shape, vec![rows as i64, 2]);
        }
        assert_eq!(*seen.lock().unwrap(), vec![1, 6]);
        b.close();
        b.join();
    }

    #[test]
    fn full_queue_rejects_and_close_drains() {
        let (b, _, open) = gated(Duration::ZERO, 1);
        let rx1 = submit_and_wait_taken(&b, 1);
        let (j2, rx2) = job(1, 0.0);
        b.submit(j2).ok().unwrap();
        let (j3, _rx3) = job(1, 0.0);
        assert!(matches!(b.submit(j3), Err(Rejected::Full(_))));
        b.close();
        let (j4, _rx4) = job(1, 0.0);
        assert!(matches!(b.submit(j4), Err(Rejected::Closed(_))));
        open();
        b.join();
        assert!(rx1.blocking_recv().unwrap().is_ok());
        assert!(
            rx2.blocking_recv().unwrap().is_ok(),
            "queued work finishes on close"
        );
    }

    /// Records the name of the thread each batch ran on.
    struct Where(Arc<Mutex<Vec<String>>>);

    impl Backend for Where {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.0.lock().unwrap().push(name);
            let x = &inputs[0];
            Ok(vec![Tensor {
                name: "y".into(),
                shape: x.shape.clone(),
                data: x.data.clone(),
            }])
        }
    }

    /// A cheap model runs on the submitting thread once its cost is
    /// measured, and not at all when inline runs are off.
    #[test]
    fn cheap_idle_model_runs_inline_once_measured() {
        for inline in [Some(Duration::from_secs(1)), None] {
            let threads = Arc::new(Mutex::new(Vec::new()));
            let b = one_instance(Where(Arc::clone(&threads)), Duration::ZERO, 4, inline);
            std::thread::Builder::new()
                .name("caller".into())
                .spawn(move || {
                    for i in 0..3 {
                        let (j, rx) = job(1, i as f32);
                        b.submit(j).ok().unwrap();
                        let out = rx.blocking_recv().unwrap().unwrap();
                        assert_eq!(out.outputs[0].shape, vec![1, 2]);
                        wait_backend_back(&b);
                    }
                    b.close();
                    b.join();
                })
                .unwrap()
                .join()
                .unwrap();
            let ran = threads.lock().unwrap().clone();
            let want = if inline.is_some() {
                // The first run measures the cost on the instance thread.
                vec!["quiver-m-v1-0", "caller", "caller"]
            } else {
                vec!["quiver-m-v1-0"; 3]
            };
            assert_eq!(ran, want);
        }
    }

    /// An answer goes out before its backend is given back: waits for that.
    fn wait_backend_back(b: &Batcher) {
        while b.shared.lock().busy > 0 {
            std::thread::yield_now();
        }
    }

    /// Runs on the thread it is called from, records that thread's name,
    /// and, once armed, announces each run and holds it until let go.
    struct Holding {
        ran: Arc<Mutex<Vec<String>>>,
        armed: Arc<std::sync::atomic::AtomicBool>,
        entered: std::sync::mpsc::SyncSender<()>,
        go: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Backend for Holding {
        fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendError> {
            let name = std::thread::current().name().unwrap_or("").to_string();
            self.ran
                .lock()
                .unwrap()
                .push(format!("{name}:{}", inputs[0].shape[0]));
            if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
                self.entered.send(()).unwrap();
                let (lock, cv) = &*self.go;
                let mut go = lock.lock().unwrap();
                while !*go {
                    go = cv.wait(go).unwrap();
                }
            }
            Ok(vec![Tensor {
                name: "y".into(),
                shape: inputs[0].shape.clone(),
                data: inputs[0].data.clone(),
            }])
        }
    }

    /// While a request's thread runs the one backend, new requests queue
    /// without waking the instance thread; when its batch is done, that
    /// same thread takes what queued, as one batch.
    #[test]
    fn the_thread_that_ran_the_engine_takes_what_queued_meanwhile() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let go = Arc::new((Mutex::new(false), Condvar::new()));
        let (entered_tx, entered) = std::sync::mpsc::sync_channel(4);
        let backend = Holding {
            ran: Arc::clone(&ran),
            armed: Arc::clone(&armed),
            entered: entered_tx,
            go: Arc::clone(&go),
        };
        let b = Arc::new(one_instance(
            backend,
            Duration::ZERO,
            8,
            Some(Duration::from_secs(60)),
        ));
        // The first run measures the model's cost, on the instance thread.
        let (j, rx) = job(1, 0.0);
        b.submit(j).ok().unwrap();
        rx.blocking_recv().unwrap().unwrap();
        wait_backend_back(&b);
        armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let runner = {
            let b = Arc::clone(&b);
            std::thread::Builder::new()
                .name("runner".into())
                .spawn(move || {
                    let (j, rx) = job(1, 1.0);
                    b.submit(j).ok().unwrap();
                    rx.blocking_recv().unwrap().unwrap()
                })
                .unwrap()
        };
        // The runner holds the backend; two requests queue behind it.
        entered.recv().unwrap();
        let queued: Vec<_> = [1usize, 2]
            .into_iter()
            .map(|rows| {
                let (j, rx) = job(rows, 2.0);
                b.submit(j).ok().unwrap();
                rx
            })
            .collect();
        assert_eq!(b.queue_len(), 2);
        armed.store(false, std::sync::atomic::Ordering::SeqCst);
        {
            let (lock, cv) = &*go;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        assert_eq!(runner.join().unwrap().batch_rows, 1);
        for rx in queued {
            assert_eq!(rx.blocking_recv().unwrap().unwrap().batch_rows, 3);
        }
        assert_eq!(
            *ran.lock().unwrap(),
            vec!["quiver-m-v1-0:1", "runner:1", "runner:3"]
        );
        b.close();
        b.join();
    }

    /// Under load the request that finds the engine free leads: what
    /// queues behind it waits for it (no instance woken), and its run
    /// takes all of it as one batch on its own thread. A leader dropped
    /// before running (its client gave up) hands the work to an instance.
    #[test]
    fn a_leader_runs_what_joined_it_and_a_dropped_one_hands_over() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (entered, _entered_rx) = std::sync::mpsc::sync_channel(1);
        let backend = Holding {
            ran: Arc::clone(&ran),
            armed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            entered,
            go: Arc::new((Mutex::new(true), Condvar::new())),
        };
        let b = one_instance(backend, Duration::ZERO, 8, Some(Duration::from_secs(60)));
        let (j, rx) = job(1, 0.0);
        b.submit(j).ok().unwrap();
        rx.blocking_recv().unwrap().unwrap();
        wait_backend_back(&b);
        // As if a request had just found the model busy, and for long.
        let contend = || {
            let mut state = b.shared.lock();
            state.contended_at = Some(Instant::now());
            state.lead_hold = Duration::from_secs(3600);
        };
        contend();
        let me = std::thread::current().name().unwrap_or("").to_string();
        let (j, first) = job(1, 1.0);
        let Ok(Submitted::Lead(leader)) = b.submit(j) else {
            panic!("the first request to find the engine free leads");
        };
        let joined: Vec<_> = [2usize, 3]
            .into_iter()
            .map(|rows| {
                let (j, rx) = job(rows, 2.0);
                assert!(matches!(b.submit(j), Ok(Submitted::Queued)));
                rx
            })
            .collect();
        assert_eq!(b.queue_len(), 3, "nobody runs before the leader");
        leader.run();
        for rx in std::iter::once(first).chain(joined) {
            assert_eq!(rx.blocking_recv().unwrap().unwrap().batch_rows, 6);
        }
        contend();
        let (j, rx) = job(1, 3.0);
        let Ok(Submitted::Lead(leader)) = b.submit(j) else {
            panic!("a leader expected");
        };
        drop(leader);
        assert_eq!(rx.blocking_recv().unwrap().unwrap().batch_rows, 1);
        assert_eq!(
            *ran.lock().unwrap(),
            vec![
                "quiver-m-v1-0:1".to_string(),
                format!("{me}:6"),
                "quiver-m-v1-0:1".to_string()
            ]
        );
        b.close();
        b.join();
    }
}
