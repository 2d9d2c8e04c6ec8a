//! One Kafka topic as a [`RecordSource`].
//!
//! The trainer is a singleton (one state file holds its windows), so it
//! takes every partition of the topic by assignment rather than by group
//! subscription: there is nothing to rebalance, and a restarted trainer
//! does not wait out its killed self's session timeout. The consumer group
//! (`group_id`) holds the committed offsets, which show lag to operators
//! and are where a trainer with no state file starts.
//!
//! Offsets are never auto-committed. The loop commits a position only after
//! the state file that includes the records before it has been written
//! ([`RecordSource::commit`]); a kill between the write and the commit
//! re-reads from the state's position, one between a poll and the write
//! re-reads from the previous one. Both lose nothing.
//!
//! Positions are `partition=next offset` pairs (`0=1200,1=877`); a record's
//! own position is `partition@offset`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::{Polled, RecordSource, SourceError};
use crate::config::KafkaConfig;

/// How long a poll waits for the first record when none is buffered.
const FIRST_RECORD_WAIT: Duration = Duration::from_millis(100);
/// How often the topic's partitions are looked up again: it may grow, or
/// not exist yet when the trainer starts (then sooner).
const METADATA_INTERVAL: Duration = Duration::from_secs(5);
const NO_TOPIC_INTERVAL: Duration = Duration::from_millis(500);
const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the partitions' high watermarks are asked for (the lag
/// metric), and how long one answer may take.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
const LAG_TIMEOUT: Duration = Duration::from_secs(2);

/// Logs the outcome of asynchronous commits (served by `poll`).
struct Commits;

impl ClientContext for Commits {}

impl ConsumerContext for Commits {
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        // A failed commit is superseded by the next one; a restart without
        // state would re-read from the previous commit, losing nothing.
        if let Err(e) = result {
            tracing::warn!(error = %e, offsets = ?offsets, "offset commit failed");
        }
    }
}

pub struct KafkaSource {
    topic: String,
    consumer: BaseConsumer<Commits>,
    /// Next offset per partition: what has been read, the position token.
    next: BTreeMap<i32, i64>,
    committed: BTreeMap<i32, i64>,
    partitions: usize,
    /// The partitions assigned.
    assigned: Vec<i32>,
    /// Each partition's high watermark when last asked, for the lag.
    highs: BTreeMap<i32, i64>,
    highs_at: Option<Instant>,
    looked_up: Option<Instant>,
}

impl KafkaSource {
    pub fn open(settings: &KafkaConfig, topic: &str) -> Result<Self, SourceError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &settings.brokers)
            .set("group.id", &settings.group_id)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (k, v) in &settings.client {
            client.set(k, v);
        }
        // Not overridable: committing before the state write could lose records.
        client
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: BaseConsumer<Commits> = client.create_with_context(Commits).map_err(kafka)?;
        Ok(KafkaSource {
            topic: topic.to_string(),
            consumer,
            next: BTreeMap::new(),
            committed: BTreeMap::new(),
            partitions: 0,
            assigned: Vec::new(),
            highs: BTreeMap::new(),
            highs_at: None,
            looked_up: None,
        })
    }

    /// Assigns every partition the topic has, once it exists; partitions
    /// with a known position start there, others at the group's committed
    /// offset (or the beginning).
    fn assign(&mut self) -> Result<(), SourceError> {
        let interval = if self.partitions == 0 {
            NO_TOPIC_INTERVAL
        } else {
            METADATA_INTERVAL
        };
        if self.looked_up.is_some_and(|t| t.elapsed() < interval) {
            return Ok(());
        }
        self.looked_up = Some(Instant::now());
        let partitions = match self
            .consumer
            .fetch_metadata(Some(&self.topic), METADATA_TIMEOUT)
        {
            Ok(md) => md
                .topics()
                .iter()
                .filter(|t| t.name() == self.topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "no metadata yet");
                return Ok(());
            }
        };
        if partitions.len() <= self.partitions {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let at = self
                .next
                .get(p)
                .map_or(Offset::Stored, |&o| Offset::Offset(o));
            tpl.add_partition_offset(&self.topic, *p, at)
                .map_err(kafka)?;
        }
        self.consumer.assign(&tpl).map_err(kafka)?;
        self.partitions = partitions.len();
        self.assigned = partitions;
        tracing::info!(topic = %self.topic, partitions = self.partitions, from = %self.position(), "assigned");
        Ok(())
    }
}

fn kafka(e: rdkafka::error::KafkaError) -> SourceError {
    SourceError::Kafka(e.to_string())
}

impl RecordSource for KafkaSource {
    fn name(&self) -> &str {
        &self.topic
    }

    fn poll(&mut self, max: usize) -> Result<Vec<Polled>, SourceError> {
        self.assign()?;
        let mut out = Vec::new();
        if self.partitions == 0 {
            return Ok(out);
        }
        let deadline = Instant::now() + FIRST_RECORD_WAIT;
        while out.len() < max {
            // Once one record is in, take only what is already buffered.
            let wait = if out.is_empty() {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    out.push(Polled {
                        at: format!("{}@{}", m.partition(), m.offset()),
                        bytes: m.payload().unwrap_or_default().to_vec(),
                    });
                }
                // librdkafka retries by itself; the loop polls again later.
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "consumer error");
                    break;
                }
            }
        }
        Ok(out)
    }

    fn position(&self) -> String {
        let pairs: Vec<String> = self.next.iter().map(|(p, o)| format!("{p}={o}")).collect();
        pairs.join(",")
    }

    fn seek(&mut self, token: &str) -> Result<(), SourceError> {
        self.next = parse_position(token)?;
        // Reassign at the new positions on the next poll.
        self.partitions = 0;
        self.looked_up = None;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), SourceError> {
        if self.next == self.committed {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &self.next {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(kafka)?;
        }
        // Async: the state file, not the commit, is the trainer's own record
        // of where it is; a lost commit means a state-less restart re-reads.
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(kafka)?;
        self.committed = self.next.clone();
        Ok(())
    }

    fn lag(&mut self) -> Vec<(i32, u64)> {
        if self.highs_at.is_none_or(|t| t.elapsed() >= LAG_INTERVAL) {
            self.highs_at = Some(Instant::now());
            for &p in &self.assigned {
                match self.consumer.fetch_watermarks(&self.topic, p, LAG_TIMEOUT) {
                    Ok((_, high)) => {
                        self.highs.insert(p, high);
                    }
                    Err(e) => {
                        tracing::debug!(topic = %self.topic, partition = p, error = %e, "no watermarks");
                    }
                }
            }
        }
        self.highs
            .iter()
            .map(|(&p, &high)| {
                let at = self.next.get(&p).copied().unwrap_or(0);
                (p, u64::try_from(high - at).unwrap_or(0))
            })
            .collect()
    }
}

/// `0=1200,1=877` → {0: 1200, 1: 877}; empty → nothing read yet.
pub fn parse_position(token: &str) -> Result<BTreeMap<i32, i64>, SourceError> {
    let bad = || SourceError::Position(token.to_string());
    token
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (p, o) = pair.split_once('=').ok_or_else(bad)?;
            Ok((p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?))
        })
        .collect()
}

/// Per-partition offset ranges of records named `partition@offset`, as
/// `0=120..=1450,1=98..=1502`; `None` if any is not such a name.
pub fn offset_ranges<'a>(ats: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for at in ats {
        let (p, o) = at.split_once('@')?;
        let (p, o): (i32, i64) = (p.parse().ok()?, o.parse().ok()?);
        let r = ranges.entry(p).or_insert((o, o));
        r.0 = r.0.min(o);
        r.1 = r.1.max(o);
    }
    if ranges.is_empty() {
        return None;
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|(p, (a, b))| format!("{p}={a}..={b}"))
        .collect();
    Some(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_reject_garbage() {
        let p = parse_position("0=1200,3=7").unwrap();
        assert_eq!(p, BTreeMap::from([(0, 1200), (3, 7)]));
        assert!(parse_position("").unwrap().is_empty());
        assert!(parse_position("0:12").is_err());
        assert!(parse_position("x=1").is_err());
    }

    #[test]
    fn offset_ranges_are_per_partition() {
        let ats = ["0@5", "1@9", "0@3", "0@8", "1@10"];
        assert_eq!(
            offset_ranges(ats.into_iter()).as_deref(),
            Some("0=3..=8,1=9..=10")
        );
        assert_eq!(offset_ranges(["0:12"].into_iter()), None);
        assert_eq!(offset_ranges([].into_iter()), None);
    }
}
