//! `--delete-consumed`: what a broker's retention does for a long run,
//! done by the load generator for its own records.
//!
//! A Kafka broker finds a fetch offset through its segment index, so its
//! cost per fetch does not grow with what a partition holds. A broker that
//! lists every stored batch on each fetch (nisshi's in-memory store does)
//! gets slower the longer a run lasts, and then measures itself rather than
//! the gateway. This thread keeps both topics short: every
//! [`INTERVAL`], the requests topic is cut at the gateway group's committed
//! offsets (records already answered and committed), the responses topic
//! at this run's reader position (records already read), with the
//! DeleteRecords API. Nothing still needed is deleted, so every record
//! stays accounted for.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::client::{Answers, progress};

/// How often the consumed records are deleted.
const INTERVAL: Duration = Duration::from_millis(250);
/// The longest a metadata, committed-offsets or delete call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) struct Retention {
    admin: AdminClient<DefaultClientContext>,
    /// A consumer in the gateway's group that never joins it: it only reads
    /// the group's committed offsets.
    gateway_group: BaseConsumer,
    reader: Arc<BaseConsumer>,
    requests_topic: String,
    runtime: tokio::runtime::Runtime,
}

impl Retention {
    pub(super) fn new(
        brokers: &str,
        gateway_group: &str,
        requests_topic: &str,
        reader: Arc<BaseConsumer>,
    ) -> Result<Retention> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .context("cannot create the Kafka admin client")?;
        let gateway_group = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", gateway_group)
            .set("enable.auto.commit", "false")
            .create()
            .context("cannot create the committed-offsets reader")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("cannot start the retention thread's runtime")?;
        Ok(Retention {
            admin,
            gateway_group,
            reader,
            requests_topic: requests_topic.to_string(),
            runtime,
        })
    }

    /// Runs until `answers.stop`; a failed round is reported once and
    /// retried at the next interval.
    pub(super) fn run(&self, answers: &Answers) {
        let mut warned = false;
        while !answers.stop.load(Ordering::Relaxed) {
            std::thread::sleep(INTERVAL);
            if let Err(e) = self.round()
                && !warned
            {
                progress(&format!("deleting consumed records: {e:#}"));
                warned = true;
            }
        }
    }

    fn round(&self) -> Result<()> {
        let mut cut = TopicPartitionList::new();
        let metadata = self
            .gateway_group
            .fetch_metadata(Some(&self.requests_topic), CALL_TIMEOUT)
            .context("requests topic metadata")?;
        let mut partitions = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                partitions.add_partition(t.name(), p.id());
            }
        }
        if partitions.count() > 0 {
            let committed = self
                .gateway_group
                .committed_offsets(partitions, CALL_TIMEOUT)
                .context("the gateway group's committed offsets")?;
            add_positions(&mut cut, &committed)?;
        }
        let read = self.reader.position().context("the reader's position")?;
        add_positions(&mut cut, &read)?;
        if cut.count() == 0 {
            return Ok(());
        }
        let options = AdminOptions::new().operation_timeout(Some(CALL_TIMEOUT));
        let result = self
            .runtime
            .block_on(self.admin.delete_records(&cut, &options))
            .context("DeleteRecords")?;
        if let Some(e) = result.elements().iter().find_map(|e| e.error().err()) {
            return Err(e).context("DeleteRecords of a partition");
        }
        Ok(())
    }
}

/// Adds each partition of `from` with a known offset to `to`.
fn add_positions(to: &mut TopicPartitionList, from: &TopicPartitionList) -> Result<()> {
    for e in from.elements() {
        if let Offset::Offset(o) = e.offset()
            && o > 0
        {
            to.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
        }
    }
    Ok(())
}
