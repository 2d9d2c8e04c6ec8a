//! A real Kafka-protocol broker for tests: nisshi (installed by
//! `scripts/setup.sh --broker`, found through `QUIVER_NISSHI`), started on a
//! free loopback port with in-memory storage and stopped on drop; plus
//! small rdkafka helpers to produce and read topics.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

/// A running broker; killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    binary: PathBuf,
}

impl Broker {
    /// Starts a broker on a free port and waits until it accepts clients.
    pub fn start() -> Result<Broker> {
        let binary = PathBuf::from(std::env::var("QUIVER_NISSHI").context(
            "QUIVER_NISSHI is not set: run the tests through scripts/test.sh, or \
             eval \"$(scripts/setup.sh --broker)\" first",
        )?);
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut broker = Broker {
            child: None,
            port,
            binary,
        };
        broker.spawn()?;
        Ok(broker)
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(&self.binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://nisshi/"])
            .args(["--group-initial-rebalance-delay", "0s"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("broker did not listen on port {} within 20 s", self.port)
    }

    /// Kills the broker at once (SIGKILL): an outage, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a fresh broker (empty: in-memory storage) on the same port.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A record to produce.
pub struct Outgoing<'a> {
    pub key: Option<&'a str>,
    pub value: Vec<u8>,
    pub headers: Vec<(&'a str, &'a str)>,
}

/// Produces records and waits until all are confirmed.
pub fn produce(bootstrap: &str, topic: &str, records: &[Outgoing<'_>]) -> Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()?;
    for Outgoing {
        key,
        value,
        headers,
    } in records
    {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut rec = BaseRecord::<str, [u8]>::to(topic).payload(value).headers(h);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        let mut rec = rec;
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        bail!("produce to {topic}: {e}");
                    }
                    rec = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Reads every partition of `topic` from the start until `want` records
/// have been seen or `timeout` passes (no consumer group, no commits).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    want: usize,
    timeout: Duration,
) -> Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "quiver-tests-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let deadline = Instant::now() + timeout;
    // The topic may not exist yet: wait for its metadata.
    let partitions = loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5));
        if let Ok(md) = md
            && let Some(t) = md.topics().first()
            && t.error().is_none()
            && !t.partitions().is_empty()
        {
            break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
        }
        if Instant::now() > deadline {
            bail!("topic {topic} did not appear");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Some(Err(e)) => bail!("reading {topic}: {e}"),
            None => {}
        }
    }
    Ok(out)
}
