//! The traffic generator: sends a stream's rows to the gateway at a steady
//! rate, one infer request per row with its own id (and the same id as the
//! sticky routing key), releases each label after the label delay through
//! the feedback endpoint in batches, and scores every labelled prediction
//! by the version that served it.
//!
//! Tasks: a pacer hands rows out at their due times to a pool of keep-alive
//! connections (a bounded queue, so at most about two rows per connection
//! are in flight); a poller reads the gateway's routing history; a sender
//! posts label batches. One collector owns all state (pending labels,
//! scores, output files) and hears from the others over a channel.

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use bytes::Bytes;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use super::delay::{LabelDelay, Pending};
use super::events::{self, Event, Kind};
use super::infer::{self, Answer};
use super::output::{RunInfo, Writer};
use super::score::{Scored, Scorer};
use crate::http::{self, HttpConn};
use crate::streams::Stream;

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub model: String,
    /// The model's input tensor name.
    pub input: String,
    /// Rows per second.
    pub rate: f64,
    pub delay: LabelDelay,
    pub connections: usize,
    /// Labels per feedback request, at most.
    pub feedback_batch: usize,
    /// Labels wait at most this long for a batch to fill.
    pub feedback_every: Duration,
    /// Labels in the progress line's accuracy window.
    pub window: usize,
    pub routing_every: Duration,
    pub timeout: Duration,
    pub out_dir: PathBuf,
}

struct Job {
    seq: u64,
    body: Bytes,
}

enum Msg {
    Sent {
        seq: u64,
    },
    Answered {
        seq: u64,
        at: Instant,
        result: Result<Answer, String>,
    },
    Done,
    Routing(Vec<serde_json::Value>),
}

#[derive(Default)]
struct FeedbackStats {
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn worker(
    opts: Arc<Options>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    msgs: mpsc::UnboundedSender<Msg>,
) {
    let path = format!("/v2/models/{}/infer", opts.model);
    let mut conn: Option<HttpConn> = None;
    loop {
        let job = jobs.lock().await.recv().await;
        let Some(job) = job else { return };
        let result = call(&opts, &mut conn, &path, &job).await;
        if result.is_err() {
            conn = None;
        }
        let _ = msgs.send(Msg::Answered {
            seq: job.seq,
            at: Instant::now(),
            result,
        });
    }
}

async fn call(
    opts: &Options,
    conn: &mut Option<HttpConn>,
    path: &str,
    job: &Job,
) -> Result<Answer, String> {
    if conn.is_none() {
        *conn = Some(
            HttpConn::open(opts.addr)
                .await
                .map_err(|_| "connect".to_string())?,
        );
    }
    let Some(c) = conn.as_mut() else {
        return Err("connect".into());
    };
    let headers = [
        ("content-type", "application/json".to_string()),
        ("x-quiver-key", infer::request_id(job.seq)),
    ];
    let req = http::build(opts.addr, "POST", path, &headers, job.body.clone())
        .map_err(|_| "bad_request".to_string())?;
    let reply = tokio::time::timeout(opts.timeout, c.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|_| "io".to_string())?;
    if reply.status != 200 {
        return Err(reply.status.to_string());
    }
    infer::parse_answer(&reply.body, reply.version).map_err(|_| "bad_answer".to_string())
}

async fn pacer(
    stream: Arc<Stream>,
    rows: Range<usize>,
    opts: Arc<Options>,
    start: Instant,
    jobs: mpsc::Sender<Job>,
    msgs: mpsc::UnboundedSender<Msg>,
) {
    for (k, seq) in rows.enumerate() {
        let due = start + Duration::from_secs_f64(k as f64 / opts.rate);
        tokio::time::sleep_until(due.into()).await;
        let body = infer::infer_body(seq as u64, &opts.input, &stream.rows[seq].features);
        let _ = msgs.send(Msg::Sent { seq: seq as u64 });
        if jobs
            .send(Job {
                seq: seq as u64,
                body,
            })
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = msgs.send(Msg::Done);
}

async fn poll_routing(opts: Arc<Options>, msgs: mpsc::UnboundedSender<Msg>) {
    let path = format!("/v2/models/{}/routing", opts.model);
    let mut tick = tokio::time::interval(opts.routing_every);
    loop {
        tick.tick().await;
        if let Ok(v) = http::get_json(opts.addr, &path).await
            && let Some(h) = v["rollout"]["history"].as_array()
        {
            let _ = msgs.send(Msg::Routing(h.clone()));
        }
    }
}

async fn send_feedback(
    opts: Arc<Options>,
    mut batches: mpsc::Receiver<Vec<(u64, u8)>>,
    stats: Arc<FeedbackStats>,
) {
    let path = format!("/v2/models/{}/feedback", opts.model);
    let mut conn: Option<HttpConn> = None;
    let mut warned = false;
    while let Some(batch) = batches.recv().await {
        stats.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let headers = [("content-type", "application/json".to_string())];
        let body = infer::feedback_body(&batch);
        let reply = match (
            conn.take(),
            http::build(opts.addr, "POST", &path, &headers, body),
        ) {
            (_, Err(e)) => Err(e),
            (Some(c), Ok(req)) => conn.insert(c).request(req).await,
            (None, Ok(req)) => match HttpConn::open(opts.addr).await {
                Ok(c) => conn.insert(c).request(req).await,
                Err(e) => Err(e),
            },
        };
        let accepted = match &reply {
            Ok(r) if r.status == 200 => serde_json::from_slice::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["accepted"].as_u64()),
            _ => None,
        };
        match accepted {
            Some(n) => {
                stats.accepted.fetch_add(n, Ordering::Relaxed);
            }
            None => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                if reply.is_err() {
                    conn = None;
                }
                if !warned {
                    warned = true;
                    let why = match reply {
                        Ok(r) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body)),
                        Err(e) => e.to_string(),
                    };
                    eprintln!(
                        "\nquiver-bench stream: feedback failed ({why}); counting further failures quietly"
                    );
                }
            }
        }
    }
}

/// Runs rows `rows` of `stream` through the gateway; returns what
/// `run.json` holds (also written, with the predictions and events, under
/// `opts.out_dir`).
pub async fn run(stream: Arc<Stream>, rows: Range<usize>, opts: Options) -> Result<RunInfo> {
    let opts = Arc::new(opts);
    let mut writer = Writer::create(&opts.out_dir)?;
    let total = rows.len() as u64;
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let (job_tx, job_rx) = mpsc::channel(opts.connections.max(1));
    let (fb_tx, fb_rx) = mpsc::channel(64);
    let fb_stats = Arc::new(FeedbackStats::default());
    let jobs = Arc::new(Mutex::new(job_rx));
    let start = Instant::now();
    let start_ms = unix_ms();

    // Every task is owned by this set and aborted when it is dropped.
    let mut tasks = JoinSet::new();
    for _ in 0..opts.connections.max(1) {
        tasks.spawn(worker(opts.clone(), jobs.clone(), msg_tx.clone()));
    }
    tasks.spawn(pacer(
        stream.clone(),
        rows.clone(),
        opts.clone(),
        start,
        job_tx,
        msg_tx.clone(),
    ));
    let mut poller = JoinSet::new();
    poller.spawn(poll_routing(opts.clone(), msg_tx.clone()));
    let feedback = tokio::spawn(send_feedback(opts.clone(), fb_rx, fb_stats.clone()));
    drop(msg_tx);

    let mut st = Collector {
        stream: stream.clone(),
        delay: opts.delay,
        start,
        pending: Pending::default(),
        scorer: Scorer::new(opts.window),
        batch: Vec::new(),
        last_flush: Instant::now(),
        last_sent: None,
        sent: 0,
        answered: 0,
        errors: BTreeMap::new(),
        seen_history: HashSet::new(),
        onsets: Vec::new(),
    };
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut last_line = Instant::now();
    let mut done = false;
    while !(done && st.answered + st.failed() >= st.sent) {
        tokio::select! {
            msg = msg_rx.recv() => match msg {
                Some(Msg::Done) => done = true,
                Some(m) => st.on(m, &mut writer)?,
                None => break,
            },
            _ = tick.tick() => {}
        }
        st.release(&mut writer)?;
        if st.batch.len() >= opts.feedback_batch || st.last_flush.elapsed() >= opts.feedback_every {
            st.flush(&fb_tx).await;
        }
        let every = if terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if last_line.elapsed() >= every {
            last_line = Instant::now();
            let line = st.progress(&stream.name, total, opts.window);
            let mut err = std::io::stderr().lock();
            let _ = if terminal {
                write!(err, "\r\x1b[2K{line}")
            } else {
                writeln!(err, "{line}")
            };
        }
    }
    tasks.abort_all();
    let seconds = start.elapsed().as_secs_f64();
    // The end of the stream: every label still pending is released now.
    for s in st.pending.drain() {
        st.score(s, &mut writer)?;
    }
    st.flush(&fb_tx).await;
    drop(fb_tx);
    let _ = feedback.await;
    // One last look at the routing history, for decisions of the last second.
    tokio::time::sleep(opts.routing_every).await;
    while let Ok(m) = msg_rx.try_recv() {
        st.on(m, &mut writer)?;
    }
    poller.abort_all();
    if terminal {
        eprintln!("\r\x1b[2K{}", st.progress(&stream.name, total, opts.window));
    }
    let info = RunInfo {
        stream: stream.name.clone(),
        model: opts.model.clone(),
        gateway: opts.addr.to_string(),
        rate: opts.rate,
        label_delay: format!("{:?}", opts.delay),
        start_ms,
        seconds,
        rows_sent: st.sent,
        answered: st.answered,
        achieved_rate: st.answered as f64 / seconds.max(1e-9),
        errors: st.errors.clone(),
        labels_sent: fb_stats.sent.load(Ordering::Relaxed),
        labels_accepted: fb_stats.accepted.load(Ordering::Relaxed),
        feedback_errors: fb_stats.errors.load(Ordering::Relaxed),
        overall: st.scorer.all,
        by_version: st.scorer.by_version.clone(),
        onsets: st.onsets.clone(),
    };
    writer.finish(&info)?;
    Ok(info)
}

/// An answered prediction waiting for its label.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    seq: u64,
    answered_s: f64,
    answer: Answer,
}

struct Collector {
    stream: Arc<Stream>,
    delay: LabelDelay,
    start: Instant,
    pending: Pending<Waiting>,
    scorer: Scorer,
    batch: Vec<(u64, u8)>,
    last_flush: Instant,
    last_sent: Option<u64>,
    sent: u64,
    answered: u64,
    errors: BTreeMap<String, u64>,
    seen_history: HashSet<String>,
    onsets: Vec<(usize, f64, String)>,
}

impl Collector {
    fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    fn on(&mut self, msg: Msg, writer: &mut Writer) -> Result<()> {
        match msg {
            Msg::Sent { seq } => {
                self.sent += 1;
                self.last_sent = Some(seq);
                for o in self.stream.onsets.iter().filter(|o| o.row as u64 == seq) {
                    let t = self.start.elapsed().as_secs_f64();
                    self.onsets.push((o.row, t, o.label.clone()));
                    writer.event(&Event {
                        t_ms: unix_ms(),
                        source: "stream".into(),
                        kind: Kind::DriftOnset,
                        version: None,
                        detail: format!("{} at row {}", o.label, o.row),
                    })?;
                }
            }
            Msg::Answered { seq, at, result } => match result {
                Ok(answer) => {
                    self.answered += 1;
                    let answered_s = at.duration_since(self.start).as_secs_f64();
                    let row = &self.stream.rows[seq as usize];
                    let due = self.delay.due(seq, row.label_time, answered_s);
                    self.pending.push(
                        due,
                        Waiting {
                            seq,
                            answered_s,
                            answer,
                        },
                    );
                }
                Err(key) => *self.errors.entry(key).or_default() += 1,
            },
            Msg::Routing(history) => {
                for entry in history {
                    if self.seen_history.insert(entry.to_string())
                        && let Some(e) = events::from_gateway(&entry)
                    {
                        writer.event(&e)?;
                    }
                }
            }
            Msg::Done => {}
        }
        Ok(())
    }

    fn release(&mut self, writer: &mut Writer) -> Result<()> {
        let Some(last) = self.last_sent else {
            return Ok(());
        };
        let now_s = self.start.elapsed().as_secs_f64();
        let clock = self
            .delay
            .clock(last, self.stream.rows[last as usize].time, now_s);
        for w in self.pending.pop_due(clock) {
            self.score(w, writer)?;
        }
        Ok(())
    }

    fn score(&mut self, w: Waiting, writer: &mut Writer) -> Result<()> {
        let label = self.stream.rows[w.seq as usize].label;
        let s = Scored {
            seq: w.seq,
            answered_s: w.answered_s,
            labelled_s: self.start.elapsed().as_secs_f64(),
            version: w.answer.version,
            p: w.answer.p,
            label,
        };
        self.scorer.add(&s);
        writer.scored(&s)?;
        self.batch.push((w.seq, label));
        Ok(())
    }

    async fn flush(&mut self, tx: &mpsc::Sender<Vec<(u64, u8)>>) {
        self.last_flush = Instant::now();
        if !self.batch.is_empty() {
            let _ = tx.send(std::mem::take(&mut self.batch)).await;
        }
    }

    fn progress(&self, name: &str, total: u64, window: usize) -> String {
        let elapsed = self.start.elapsed().as_secs_f64();
        let acc = self
            .scorer
            .window_accuracy()
            .map_or("-".into(), |a| format!("{a:.3}"));
        let versions: Vec<String> = self
            .scorer
            .window_versions()
            .iter()
            .map(|(v, share)| format!("v{v} {:.0}%", share * 100.0))
            .collect();
        format!(
            "{name} {} {}/{total} rows  {:.0} rows/s  in flight {}  labelled {}  acc(last {window}) {acc}  serving {}  errors {}",
            crate::progress::bar(self.sent as f64 / total.max(1) as f64),
            self.sent,
            self.answered as f64 / elapsed.max(1e-9),
            self.sent.saturating_sub(self.answered + self.failed()),
            self.scorer.all.n,
            if versions.is_empty() {
                "-".into()
            } else {
                versions.join(" ")
            },
            self.failed(),
        )
    }
}
