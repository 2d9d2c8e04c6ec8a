//! The model manager: the one owner of which versions are loaded and how
//! each model's traffic is routed. It runs on its own thread and is fed by
//! a bounded inbox: commands from the admin API, results from the load
//! workers. On its clock it reads the repository (new, changed and removed
//! versions, config and routing files), writes this replica's traffic
//! report, keeps or seeks the fleet's guardrail lease (`fleet`), and,
//! while it leads, runs the rollout guardrail (`rollout`). Every routing
//! change it makes is a compare-and-swap in the registry.
//!
//! Its parts: `model` (one model's files, slots and routing), `fleet`
//! (reports, lease, merged traffic), `rollout` (guardrail, verdicts,
//! routing changes).
//!
//! Every change ends the same way: build the whole live set anew and
//! publish it with one `ArcSwap::store`. Loading (ONNX Runtime sessions,
//! warm-up) happens on a few worker threads, so a slow load delays neither
//! requests nor a guardrail's rollback.

mod fleet;
pub mod fleet_config;
mod model;
mod rollout;

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ort::environment::Environment;
use quiver_registry::Registry;

use crate::error::ApiError;
use crate::live::{LiveModels, ServedVersion};
use crate::metrics::{
    MODEL_LOADS_TOTAL, MODELS_LOADED, REGISTRY_ERRORS_TOTAL, REGISTRY_POLLS_TOTAL,
    REGISTRY_REQUESTS_TOTAL,
};
use crate::repository::{self, Fingerprint, ModelConfig, Repository, VersionDir};
use crate::state::Gateway;
use fleet::Fleet;
use model::ModelState;

/// Commands waiting for the manager; past it the admin API answers 503.
const INBOX: usize = 256;

use crate::commands::{Answer, Commands, Reply};
pub use crate::commands::{Command, Verdict, VerdictAction};

enum Msg {
    Command(Command, Reply),
    Loaded(Box<Loaded>),
    Shutdown,
}

/// A version to load, with everything the worker needs.
struct LoadTask {
    model: String,
    version: VersionDir,
    target: Target,
    config: ModelConfig,
}

/// What a slot was (or is being) loaded from: files and config generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    fingerprint: Fingerprint,
    config_gen: u64,
}

struct Loaded {
    model: String,
    version: u64,
    target: Target,
    result: Result<ServedVersion, String>,
    elapsed: Duration,
}

/// The admin API's side of the manager.
pub struct ManagerHandle {
    inbox: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ManagerHandle {
    /// The admin API's channel into this manager.
    pub fn commands(&self) -> Commands {
        let inbox = self.inbox.clone();
        Commands::new(
            move |cmd, reply| match inbox.try_send(Msg::Command(cmd, reply)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err(ApiError::NotReady(
                    "the model manager is busy; retry shortly".into(),
                )),
                Err(TrySendError::Disconnected(_)) => {
                    Err(ApiError::NotReady("the gateway is shutting down".into()))
                }
            },
        )
    }

    /// Stops the manager after the loads in flight and joins its threads.
    pub fn shutdown(&self) {
        let _ = self.inbox.send(Msg::Shutdown);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread
            && t.join().is_err()
        {
            tracing::error!("model manager thread panicked");
        }
    }
}

/// Starts the manager; it reads the repository at once.
pub fn start(
    gw: Arc<Gateway>,
    env: &'static Environment,
    registry: Registry,
) -> std::io::Result<ManagerHandle> {
    let (inbox, rx) = mpsc::sync_channel(INBOX);
    let (task_tx, task_rx) = mpsc::channel::<LoadTask>();
    let task_rx = Arc::new(Mutex::new(task_rx));
    let mut workers = Vec::new();
    let niceness = gw.settings.repository.load_niceness;
    for i in 0..gw.settings.repository.max_concurrent_loads {
        let tasks = Arc::clone(&task_rx);
        let done = inbox.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("quiver-load-{i}"))
                .spawn(move || load_worker(&tasks, &done, env, niceness))?,
        );
    }
    let settings = &gw.settings;
    let repo = Repository::new(
        registry,
        settings.repository.cache_dir.clone(),
        settings.repository.full_scan_interval,
    );
    let fleet = Fleet::new(&settings.fleet);
    let manager = Manager {
        repo,
        fleet,
        registry_problem: None,
        gw,
        models: BTreeMap::new(),
        tasks: Some(task_tx),
        queue: VecDeque::new(),
        in_flight: 0,
        config_gen: 0,
        loaded: false,
        removed: false,
    };
    let thread = std::thread::Builder::new()
        .name("quiver-manager".into())
        .spawn(move || manager.run(&rx, workers))?;
    Ok(ManagerHandle {
        inbox,
        thread: Mutex::new(Some(thread)),
    })
}

/// Loads one version after another. The heavy part runs `niceness` below
/// this thread; the instance threads start here, at serving priority.
fn load_worker(
    tasks: &Mutex<Receiver<LoadTask>>,
    done: &SyncSender<Msg>,
    env: &Environment,
    niceness: i32,
) {
    loop {
        let task = {
            let rx = tasks.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        let Ok(task) = task else { return };
        let started = Instant::now();
        let version = task.version.version;
        // ONNX Runtime's own thread pool (intra_op_threads other than 1) is
        // started while the session is built and would inherit a lowered
        // priority; such models load at full priority.
        let niceness = if task.config.settings.intra_op_threads == 1 {
            niceness
        } else {
            0
        };
        let result = crate::loader::at_lower_priority(niceness, || {
            let (dir, manifest) = task.version.materialize(&task.model)?;
            crate::loader::prepare_checked(
                &task.model,
                version,
                &dir,
                manifest.as_deref(),
                &task.config,
                env,
            )
        })
        .and_then(crate::loader::Prepared::start);
        let msg = Msg::Loaded(Box::new(Loaded {
            model: task.model,
            version,
            target: task.target,
            result,
            elapsed: started.elapsed(),
        }));
        if done.send(msg).is_err() {
            return;
        }
    }
}

struct Manager {
    gw: Arc<Gateway>,
    repo: Repository,
    fleet: Fleet,
    /// Why the last poll of the registry failed, while it does.
    registry_problem: Option<String>,
    models: BTreeMap<String, ModelState>,
    /// Dropped at shutdown, which ends the workers.
    tasks: Option<mpsc::Sender<LoadTask>>,
    /// Loads waiting for a free worker.
    queue: VecDeque<LoadTask>,
    in_flight: usize,
    /// Bumped whenever any model's config changes; part of each target.
    config_gen: u64,
    /// The first full read of the repository has finished loading.
    loaded: bool,
    /// A model went away since the last publish.
    removed: bool,
}

impl Manager {
    fn run(mut self, inbox: &Receiver<Msg>, workers: Vec<JoinHandle<()>>) {
        let poll = self.gw.settings.repository.poll_interval;
        let tick = self.gw.settings.routing.rollout_interval;
        self.poll_all(true);
        self.dispatch();
        self.publish();
        let mut next_poll = poll.map(|p| Instant::now() + p);
        let mut next_tick = Instant::now() + tick;
        loop {
            let now = Instant::now();
            let wake = next_poll.map_or(next_tick, |p| p.min(next_tick));
            match inbox.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Msg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(Msg::Command(cmd, reply)) => self.command(cmd, reply),
                Ok(Msg::Loaded(done)) => self.loaded(*done),
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if let (Some(p), Some(due)) = (poll, next_poll)
                && now >= due
            {
                self.poll_all(false);
                next_poll = Some(now + p);
            }
            if now >= next_tick {
                let live = self.gw.live.load_full();
                self.fleet.tick(self.repo.registry(), &live, now);
                self.guard_rollouts(now);
                next_tick = now + tick;
                metrics::counter!(REGISTRY_REQUESTS_TOTAL)
                    .absolute(self.repo.registry().requests());
            }
            self.dispatch();
            // Publish first: a caller told "done" must find the new live
            // set on its very next request.
            if self.dirty() {
                self.publish();
            }
            self.answer_waiters();
        }
        self.fleet.leave(self.repo.registry());
        // Workers finish the load they hold; queued loads are abandoned.
        self.tasks = None;
        self.queue.clear();
        for w in workers {
            if w.join().is_err() {
                tracing::error!("load worker panicked");
            }
        }
    }

    /// Reads the repository (on an object store, only what its index says
    /// changed); `first` treats every version found as settled (the
    /// gateway was not running while it was written) and lists everything.
    fn poll_all(&mut self, first: bool) {
        let dirs = match self.repo.poll(first) {
            Ok(Some(d)) => {
                metrics::counter!(REGISTRY_POLLS_TOTAL, "result" => "changed").increment(1);
                d
            }
            Ok(None) => {
                metrics::counter!(REGISTRY_POLLS_TOTAL, "result" => "unchanged").increment(1);
                self.registry_ok();
                return;
            }
            Err(e) => {
                metrics::counter!(REGISTRY_ERRORS_TOTAL).increment(1);
                let why = e.to_string();
                if self.registry_problem.as_deref() != Some(why.as_str()) {
                    tracing::error!(repository = %self.repo.registry().describe(), error = %why,
                        "cannot read the model repository; serving goes on with what is loaded");
                }
                self.registry_problem = Some(why);
                return;
            }
        };
        self.registry_ok();
        let names: Vec<String> = dirs.iter().map(|d| d.name.clone()).collect();
        for dir in dirs {
            self.observe(dir, first);
        }
        // Models whose directory is gone stop serving.
        let gone: Vec<String> = self
            .models
            .keys()
            .filter(|n| !names.contains(n))
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(model = %name, "model directory removed; model unloaded");
            if let Some(state) = self.models.remove(&name) {
                state.fail_waiters(&format!("model '{name}' was removed from the repository"));
            }
            crate::metrics::swap(&name, "removed");
            self.mark_dirty();
        }
    }

    fn registry_ok(&mut self) {
        if self.registry_problem.take().is_some() {
            tracing::info!(repository = %self.repo.registry().describe(), "model repository reachable again");
        }
    }

    fn observe(&mut self, dir: repository::ModelDir, settle_all: bool) {
        let settings = &self.gw.settings;
        let state = self
            .models
            .entry(dir.name.clone())
            .or_insert_with(ModelState::new);
        if state.read_config(&dir, &settings.models, &self.repo) {
            self.config_gen += 1;
            state.config_gen = self.config_gen;
        }
        state.read_routing(&dir, &self.repo);
        let loads = state.reconcile(&dir, settle_all, settings.repository.require_manifest);
        self.queue.extend(loads);
    }

    fn dispatch(&mut self) {
        let cap = self.gw.settings.repository.max_concurrent_loads;
        while self.in_flight < cap {
            let Some(task) = self.queue.pop_front() else {
                break;
            };
            let Some(tx) = &self.tasks else { return };
            tracing::info!(model = %task.model, version = task.version.version, "loading model version");
            if tx.send(task).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    fn loaded(&mut self, done: Loaded) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let ms = done.elapsed.as_millis() as u64;
        let outcome = if done.result.is_ok() {
            "success"
        } else {
            "failure"
        };
        metrics::counter!(MODEL_LOADS_TOTAL, "model" => done.model.clone(), "outcome" => outcome)
            .increment(1);
        let Some(state) = self.models.get_mut(&done.model) else {
            return; // removed while loading: the new version just drops
        };
        match state.accept(done.version, done.target, done.result) {
            Ok(true) => {
                tracing::info!(model = %done.model, version = done.version, elapsed_ms = ms, "model version ready");
                crate::metrics::swap(&done.model, "load");
            }
            Ok(false) => {}
            Err(why) => {
                tracing::error!(model = %done.model, version = done.version, error = %why, "model version refused; it never serves");
            }
        }
        state.dirty = true;
        // Versions this one replaces can go now, without waiting a poll.
        self.rescan(&done.model);
    }

    fn command(&mut self, cmd: Command, reply: Reply) {
        match cmd {
            Command::Load(name) => match self.repo.model(&name) {
                Ok(Some(dir)) => {
                    // An operator asking means the files are in place.
                    self.observe(dir, true);
                    if let Err(e) = self.record_unloaded(&name, false) {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    self.rescan(&name);
                    if let Some(s) = self.models.get_mut(&name) {
                        s.dirty = true;
                        s.waiters.push((model::Wait::Load, reply));
                    }
                }
                Ok(None) => {
                    let _ = reply.send(Err(ApiError::NotFound(format!(
                        "no model '{name}' in the repository"
                    ))));
                }
                Err(e) => {
                    let _ = reply.send(Err(ApiError::NotReady(format!(
                        "cannot read the model repository: {e}"
                    ))));
                }
            },
            Command::Unload(name) => match self.record_unloaded(&name, true) {
                Ok(()) => {
                    if let Some(s) = self.models.get_mut(&name)
                        && !s.unloaded
                    {
                        s.unload();
                        crate::metrics::swap(&name, "unload");
                    }
                    tracing::info!(model = %name, "model unloaded through the API");
                    // Answered once the live set no longer serves it, so a
                    // client's next readiness check sees the unload.
                    self.publish();
                    let _ = reply.send(Ok(serde_json::json!({"name": name, "unloaded": true})));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::SetRouting(name, routing) => self.set_routing(name, *routing, reply),
            Command::Verdict(name, verdict) => self.verdict(name, verdict, reply),
        }
    }

    fn answer_waiters(&mut self) {
        for (name, state) in &mut self.models {
            state.answer_waiters(name);
        }
    }

    fn dirty(&self) -> bool {
        self.removed
            || self.models.values().any(|m| m.dirty)
            || (!self.loaded && self.initial_load_done())
    }

    fn mark_dirty(&mut self) {
        // A removed model leaves no state to flag.
        self.removed = true;
    }

    fn initial_load_done(&self) -> bool {
        self.in_flight == 0 && self.queue.is_empty()
    }

    fn publish(&mut self) {
        if !self.loaded && self.initial_load_done() {
            self.loaded = true;
        }
        self.removed = false;
        let mut live = LiveModels {
            models: BTreeMap::new(),
            loaded: self.loaded,
        };
        for (name, state) in &mut self.models {
            live.models.insert(name.clone(), state.entry(name));
            state.dirty = false;
        }
        metrics::gauge!(MODELS_LOADED).set(live.served().count() as f64);
        let ready = live.is_ready();
        self.gw.live.store(Arc::new(live));
        tracing::debug!(ready, "live set published");
    }
}
