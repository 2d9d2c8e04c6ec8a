//! `[log]` and `[kafka]` in gateway.toml, and their validated forms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use quiver_contract::records;
use serde::Deserialize;

use crate::error::InvalidSetting;

/// `[log]`: what is logged and where it goes without a broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log every served prediction (inputs, outputs, version, arm,
    /// latency). Labels from the feedback endpoint are logged either way.
    pub predictions: bool,
    /// Share of requests logged, in (0, 1]. Chosen by the request's routing
    /// key, so a sampled request id is sampled wherever it is served.
    pub sample_rate: f64,
    /// Records waiting for the writer thread. Past it a prediction is
    /// dropped (counted as `dropped`) and labels get 503; it holds seconds
    /// of traffic, so it fills only if the disk stalls.
    pub queue_capacity: usize,
    /// The local log, used when `kafka.brokers` is empty: one directory per
    /// topic under it, of JSON-lines segment files the trainer reads.
    pub dir: PathBuf,
    /// Size at which a segment file (local log or spool) is closed and a new
    /// one started, in bytes.
    pub segment_bytes: u64,
    /// The local log keeps at most this many bytes per topic; the oldest
    /// segments are deleted past it (counted and logged).
    pub retention_bytes: u64,
    /// How often appended records are forced to disk (fsync), in ms; 0
    /// forces every burst before the writer takes the next one.
    pub fsync_interval_ms: u64,
    /// Topic of prediction records (also the local log's directory name).
    pub predictions_topic: String,
    /// Topic of label records (also the local log's directory name).
    pub labels_topic: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            predictions: true,
            sample_rate: 1.0,
            queue_capacity: 65_536,
            dir: PathBuf::from("quiver-log"),
            segment_bytes: 64 << 20,
            retention_bytes: 4 << 30,
            fsync_interval_ms: 1000,
            predictions_topic: records::PREDICTIONS_TOPIC.into(),
            labels_topic: records::LABELS_TOPIC.into(),
        }
    }
}

/// `[kafka]`: the broker, the spool, and the ingress consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Empty: no Kafka; the
    /// prediction log goes to `log.dir` and ingress is off.
    pub brokers: String,
    /// Where records wait while the broker is slow or away; replayed in
    /// order when it is back.
    pub spool_dir: PathBuf,
    /// The spool's cap in bytes (per topic). Past it new records are
    /// dropped, counted as `dropped` and logged, so the disk never fills.
    pub spool_max_bytes: u64,
    /// How often a spooling gateway tries the broker again, in ms.
    pub retry_interval_ms: u64,
    /// How long shutdown waits for the broker to take what is in flight
    /// before the rest goes to the spool, in ms.
    pub shutdown_flush_ms: u64,
    /// librdkafka producer options, passed through as they are, e.g.
    /// `"linger.ms" = "5"`, `"security.protocol" = "ssl"`. Quiver's
    /// defaults: linger.ms 50, compression.type zstd, acks all,
    /// message.timeout.ms 10000 for the prediction log; linger.ms 5 and
    /// compression.type none for ingress answers, which a client waits
    /// for. Options set here apply to both. (Idempotence stays off: a producer id does
    /// not survive a broker that restarts empty, and every record has its
    /// own key, so retries cannot reorder a key.)
    pub producer: BTreeMap<String, ClientOption>,
    /// Serving requests from a Kafka topic.
    pub ingress: IngressConfig,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            spool_dir: PathBuf::from("quiver-spool"),
            spool_max_bytes: 1 << 30,
            retry_interval_ms: 1000,
            shutdown_flush_ms: 10_000,
            producer: BTreeMap::new(),
            ingress: IngressConfig::default(),
        }
    }
}

/// `[kafka.ingress]`: a consumer group on the requests topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngressConfig {
    /// Serve inference requests read from `requests_topic`.
    pub enabled: bool,
    /// Where Kafka producers send requests (OIP v2 JSON plus `model_name`).
    pub requests_topic: String,
    /// Where answers go, keyed and headed by the correlation id.
    pub responses_topic: String,
    /// Where records that cannot be read go, with a `quiver-error` header.
    pub dead_letter_topic: String,
    /// The consumer group; gateways sharing it share the partitions.
    pub group_id: String,
    /// Requests read but not yet answered, per gateway; at the cap nothing
    /// more is read until one is answered. While a model's queue is full
    /// the consumer pauses its partitions.
    pub max_in_flight: usize,
    /// librdkafka consumer options, passed through as they are.
    pub consumer: BTreeMap<String, ClientOption>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            enabled: false,
            requests_topic: records::REQUESTS_TOPIC.into(),
            responses_topic: records::RESPONSES_TOPIC.into(),
            dead_letter_topic: records::DEAD_LETTER_TOPIC.into(),
            group_id: "quiver-gateway".into(),
            max_in_flight: 256,
            consumer: BTreeMap::new(),
        }
    }
}

/// A librdkafka option's value: written as a string, number or boolean
/// (environment overrides read `2000` as a number), passed on as text.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ClientOption {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for ClientOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientOption::Text(s) => f.write_str(s),
            ClientOption::Int(n) => write!(f, "{n}"),
            ClientOption::Float(x) => write!(f, "{x}"),
            ClientOption::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// The prediction log, validated.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub predictions: bool,
    pub sample_rate: f64,
    pub queue_capacity: usize,
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub retention_bytes: u64,
    pub fsync_interval: Duration,
    /// Indexed by `Stream::index()`.
    pub topics: [String; 2],
    /// `None`: the local log.
    pub kafka: Option<KafkaSettings>,
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Every librdkafka producer option: Quiver's defaults, then the file's.
    pub producer: Vec<(String, String)>,
    pub brokers: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub retry_interval: Duration,
    pub shutdown_flush: Duration,
}

#[derive(Debug, Clone)]
pub struct IngressSettings {
    pub brokers: String,
    pub requests_topic: String,
    pub responses_topic: String,
    pub dead_letter_topic: String,
    pub group_id: String,
    pub max_in_flight: usize,
    pub consumer: Vec<(String, String)>,
    pub producer: Vec<(String, String)>,
}

fn invalid(key: &'static str, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting::new(key, message)
}

/// Validates `[log]` and `[kafka]` together: where the log goes depends on
/// whether brokers are set.
pub fn validate(
    log: LogConfig,
    kafka: KafkaConfig,
) -> Result<(LogSettings, Option<IngressSettings>), InvalidSetting> {
    if !(log.sample_rate > 0.0 && log.sample_rate <= 1.0) {
        return Err(invalid(
            "log.sample_rate",
            "must be in (0, 1]; set log.predictions = false to log none",
        ));
    }
    if log.queue_capacity == 0 {
        return Err(invalid("log.queue_capacity", "must be at least 1"));
    }
    if log.segment_bytes < 4096 {
        return Err(invalid("log.segment_bytes", "must be at least 4096"));
    }
    for (key, topic) in [
        ("log.predictions_topic", &log.predictions_topic),
        ("log.labels_topic", &log.labels_topic),
        (
            "kafka.ingress.requests_topic",
            &kafka.ingress.requests_topic,
        ),
        (
            "kafka.ingress.responses_topic",
            &kafka.ingress.responses_topic,
        ),
        (
            "kafka.ingress.dead_letter_topic",
            &kafka.ingress.dead_letter_topic,
        ),
    ] {
        check_topic(key, topic)?;
    }
    if log.predictions_topic == log.labels_topic {
        return Err(invalid(
            "log.labels_topic",
            "must differ from log.predictions_topic",
        ));
    }
    let brokers = kafka.brokers.trim().to_string();
    let producer = client_options(
        &[
            // Off every request's path: large batches, few produce requests
            // (a local broker spends 5x less per record than at 5 ms).
            ("linger.ms", "50"),
            ("compression.type", "zstd"),
            ("acks", "all"),
            ("message.timeout.ms", "10000"),
        ],
        &brokers,
        &kafka.producer,
    );
    let ingress = if kafka.ingress.enabled {
        if brokers.is_empty() {
            return Err(invalid(
                "kafka.ingress.enabled",
                "ingress needs kafka.brokers",
            ));
        }
        if kafka.ingress.max_in_flight == 0 {
            return Err(invalid("kafka.ingress.max_in_flight", "must be at least 1"));
        }
        let i = kafka.ingress;
        let mut consumer = client_options(
            &[
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("partition.assignment.strategy", "cooperative-sticky"),
                // A fetch that finds nothing returns after this long; a
                // broker that does not answer a waiting fetch as soon as
                // records arrive would otherwise add up to the default
                // 500 ms to a request that comes while the consumer is idle.
                ("fetch.wait.max.ms", "5"),
            ],
            &brokers,
            &i.consumer,
        );
        consumer.push(("group.id".into(), i.group_id.clone()));
        Some(IngressSettings {
            brokers: brokers.clone(),
            requests_topic: i.requests_topic,
            responses_topic: i.responses_topic,
            dead_letter_topic: i.dead_letter_topic,
            group_id: i.group_id,
            max_in_flight: i.max_in_flight,
            consumer,
            // Answers are waited for: no compression (the client would pay
            // for it twice). The linger stays librdkafka's 5 ms: every batch
            // is one more object a broker's fetch may have to look through,
            // and single-record batches cut a local broker's ingress
            // throughput by an order of magnitude.
            producer: client_options(
                &[
                    ("linger.ms", "5"),
                    ("compression.type", "none"),
                    ("acks", "all"),
                    ("message.timeout.ms", "10000"),
                ],
                &brokers,
                &kafka.producer,
            ),
        })
    } else {
        None
    };
    let kafka_settings = (!brokers.is_empty()).then(|| KafkaSettings {
        producer,
        brokers,
        spool_dir: kafka.spool_dir,
        spool_max_bytes: kafka.spool_max_bytes,
        retry_interval: Duration::from_millis(kafka.retry_interval_ms.max(10)),
        shutdown_flush: Duration::from_millis(kafka.shutdown_flush_ms),
    });
    Ok((
        LogSettings {
            predictions: log.predictions,
            sample_rate: log.sample_rate,
            queue_capacity: log.queue_capacity,
            dir: log.dir,
            segment_bytes: log.segment_bytes,
            retention_bytes: log.retention_bytes,
            fsync_interval: Duration::from_millis(log.fsync_interval_ms),
            topics: [log.predictions_topic, log.labels_topic],
            kafka: kafka_settings,
        },
        ingress,
    ))
}

/// Quiver's defaults, overridden by the file's options, with the brokers.
fn client_options(
    defaults: &[(&str, &str)],
    brokers: &str,
    given: &BTreeMap<String, ClientOption>,
) -> Vec<(String, String)> {
    let mut all: BTreeMap<String, String> = defaults
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    all.extend(given.iter().map(|(k, v)| (k.clone(), v.to_string())));
    all.insert("bootstrap.servers".into(), brokers.to_string());
    all.into_iter().collect()
}

/// Kafka's own rule: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(key: &'static str, topic: &str) -> Result<(), InvalidSetting> {
    let ok = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("'{topic}' is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_brokers_means_the_local_log_and_no_ingress() {
        let (log, ingress) = validate(LogConfig::default(), KafkaConfig::default()).unwrap();
        assert!(log.kafka.is_none());
        assert!(ingress.is_none());
        assert_eq!(log.topics[0], records::PREDICTIONS_TOPIC);
    }

    #[test]
    fn file_options_override_defaults_and_brokers_are_set() {
        let mut kafka = KafkaConfig {
            brokers: " 127.0.0.1:9092 ".into(),
            ..KafkaConfig::default()
        };
        kafka
            .producer
            .insert("linger.ms".into(), ClientOption::Int(20));
        kafka.ingress.enabled = true;
        let (log, ingress) = validate(LogConfig::default(), kafka).unwrap();
        let producer = log.kafka.unwrap().producer;
        assert!(producer.contains(&("linger.ms".into(), "20".into())));
        assert!(producer.contains(&("bootstrap.servers".into(), "127.0.0.1:9092".into())));
        let ingress = ingress.unwrap();
        assert!(
            ingress
                .consumer
                .contains(&("group.id".into(), "quiver-gateway".into()))
        );
        assert!(
            ingress
                .consumer
                .contains(&("enable.auto.commit".into(), "false".into()))
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |log: LogConfig, kafka: KafkaConfig| match validate(log, kafka) {
            Err(InvalidSetting { key, .. }) => key,
            other => panic!("expected an invalid setting, got {other:?}"),
        };
        let log = LogConfig {
            sample_rate: 0.0,
            ..LogConfig::default()
        };
        assert_eq!(bad(log, KafkaConfig::default()), "log.sample_rate");
        let log = LogConfig {
            labels_topic: "has space".into(),
            ..LogConfig::default()
        };
        assert_eq!(bad(log, KafkaConfig::default()), "log.labels_topic");
        let mut kafka = KafkaConfig::default();
        kafka.ingress.enabled = true;
        assert_eq!(bad(LogConfig::default(), kafka), "kafka.ingress.enabled");
    }
}
