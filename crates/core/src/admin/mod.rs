//! Operator-side Kafka machinery for the `medallion` command: the topic inventory and topic
//! creation ([`topics`]), consumer groups (members, committed offsets, moving them), offsets by
//! time, reading a range of a topic with its headers, and writing records back as they were.
//! Stages never use this module; it holds nothing domain-specific.
//!
//! Guarantees and limits:
//! - Only [`Admin::create_topics`], [`Admin::commit`] and [`RecordWriter::send`] change
//!   anything. Commands run every check that can refuse before calling them, so a refused command
//!   has changed nothing.
//! - [`Admin::commit`] moves a group's offsets from outside the group. Kafka accepts that only
//!   while the group has no members; the caller checks [`Admin::members`] first, and a member
//!   that joins between that check and the commit makes the broker refuse the commit.
//! - [`Admin::read`] reads a snapshot: each partition up to the end it had when the read
//!   started, so a topic written while it is read still ends.
//! - Every call waits at most [`TIMEOUT`] for the broker; an unreachable broker is
//!   [`AdminError::Unreachable`], never a hang.

pub mod topics;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as KafkaHeader, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, ProducerConfig};
use crate::dlq::Header;

pub use topics::{TopicPlan, TopicSpec, TopicState, TopicStatus};

/// How long one admin call waits for the broker.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Why an admin call failed. Each renders as one line saying what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The brokers did not answer.
    #[error("cannot reach the brokers at `{brokers}` ({reason}); check kafka.bootstrap_servers (MEDALLION__KAFKA__BOOTSTRAP_SERVERS) and that they are up")]
    Unreachable {
        /// The configured bootstrap servers.
        brokers: String,
        /// What librdkafka said.
        reason: String,
    },
    /// A topic the command needs does not exist.
    #[error(
        "topic `{topic}` does not exist; create it with `medallion topics apply` or check the name"
    )]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The broker answered with an error.
    #[error("{what} failed: {source}")]
    Kafka {
        /// What was attempted.
        what: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker refused one item of a request.
    #[error("{what} was refused by the broker: {reason}")]
    Refused {
        /// What was attempted.
        what: String,
        /// The broker's error.
        reason: String,
    },
    /// A read made no progress.
    #[error("reading `{topic}` stalled at partition {partition} offset {offset} (its end is {end}); is the broker healthy?")]
    Stalled {
        /// The topic.
        topic: String,
        /// The partition that did not move.
        partition: i32,
        /// Where it stopped.
        offset: i64,
        /// Where it should have ended.
        end: i64,
    },
}

/// One record read by [`Admin::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka timestamp, epoch millis.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<Header>,
}

/// The broker's client configuration for `kafka` (brokers, `client.id`, TLS/SASL properties).
pub fn client_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id);
    for (name, value) in &kafka.librdkafka.0 {
        config.set(name, value);
    }
    config
}

/// The operator's view of a cluster.
pub struct Admin {
    base: ClientConfig,
    brokers: String,
    admin: AdminClient<DefaultClientContext>,
    consumer: BaseConsumer,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> AdminError {
    let what = what.into();
    move |source| AdminError::Kafka { what, source }
}

impl Admin {
    /// Connects and checks that the brokers answer (a metadata request).
    pub fn connect(kafka_config: &KafkaConfig, client_id: &str) -> Result<Self, AdminError> {
        let base = client_config(kafka_config, client_id);
        let brokers = kafka_config.bootstrap_servers.clone();
        let unreachable = |error: KafkaError| AdminError::Unreachable {
            brokers: brokers.clone(),
            reason: error.to_string(),
        };
        let admin: AdminClient<DefaultClientContext> = base.create().map_err(unreachable)?;
        let mut consumer_config = base.clone();
        consumer_config
            .set("group.id", format!("{client_id}-admin"))
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = consumer_config.create().map_err(unreachable)?;
        consumer
            .fetch_metadata(None, TIMEOUT)
            .map_err(unreachable)?;
        Ok(Self {
            base,
            brokers,
            admin,
            consumer,
        })
    }

    /// Every topic with its partition count and replication factor (configs not included).
    pub fn topics(&self) -> Result<BTreeMap<String, TopicState>, AdminError> {
        let metadata = self
            .consumer
            .fetch_metadata(None, TIMEOUT)
            .map_err(kafka("listing topics"))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|topic| topic.error().is_none() && !topic.partitions().is_empty())
            .map(|topic| {
                let replication = topic
                    .partitions()
                    .iter()
                    .map(|partition| partition.replicas().len())
                    .min()
                    .unwrap_or(0);
                (
                    topic.name().to_owned(),
                    TopicState {
                        partitions: i32::try_from(topic.partitions().len()).unwrap_or(i32::MAX),
                        replication_factor: i32::try_from(replication).unwrap_or(i32::MAX),
                        config: BTreeMap::new(),
                    },
                )
            })
            .collect())
    }

    /// The partition count of `topic`; [`AdminError::UnknownTopic`] when it does not exist.
    pub fn partitions(&self, topic: &str) -> Result<i32, AdminError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(kafka(format!("reading the metadata of `{topic}`")))?;
        metadata
            .topics()
            .iter()
            .find(|found| found.name() == topic && found.error().is_none())
            .map(|found| i32::try_from(found.partitions().len()).unwrap_or(i32::MAX))
            .filter(|count| *count > 0)
            .ok_or_else(|| AdminError::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    /// The configuration the broker reports for each of `names` (every key it returns).
    pub async fn topic_configs(
        &self,
        names: &[&str],
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, AdminError> {
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        let resources: Vec<ResourceSpecifier<'_>> = names
            .iter()
            .map(|name| ResourceSpecifier::Topic(name))
            .collect();
        let results = self
            .admin
            .describe_configs(&resources, &options())
            .await
            .map_err(kafka("describing topic configurations"))?;
        let mut configs = BTreeMap::new();
        for (name, result) in names.iter().zip(results) {
            let resource = result.map_err(|code| AdminError::Refused {
                what: format!("describing the configuration of `{name}`"),
                reason: code.to_string(),
            })?;
            let entries = resource
                .entries
                .into_iter()
                .filter_map(|entry| entry.value.map(|value| (entry.name, value)))
                .collect();
            configs.insert((*name).to_owned(), entries);
        }
        Ok(configs)
    }

    /// Creates `specs` and waits until the metadata shows them. A topic that exists by the time
    /// the request arrives is not an error.
    pub async fn create_topics(&self, specs: &[TopicSpec]) -> Result<(), AdminError> {
        if specs.is_empty() {
            return Ok(());
        }
        let topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|spec| {
                spec.config.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(spec.replication_factor),
                    ),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let results = self
            .admin
            .create_topics(&topics, &options())
            .await
            .map_err(kafka("creating topics"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(AdminError::Refused {
                        what: format!("creating `{topic}`"),
                        reason: code.to_string(),
                    })
                }
            }
        }
        // A created topic is usable once the metadata shows all its partitions.
        let deadline = Instant::now() + TIMEOUT;
        for spec in specs {
            loop {
                match self.partitions(&spec.name) {
                    Ok(count) if count == spec.partitions => break,
                    Ok(_) | Err(AdminError::UnknownTopic { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(count) => {
                        return Err(AdminError::Refused {
                            what: format!("creating `{}`", spec.name),
                            reason: format!(
                                "the metadata shows {count} partitions, not {}",
                                spec.partitions
                            ),
                        })
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// The members of `group` as the broker describes them (client id and host each); a group
    /// the broker does not know has none. A broker that cannot describe groups is an error, not
    /// "no members": callers use this to decide whether moving offsets is safe.
    pub fn members(&self, group: &str) -> Result<Vec<String>, AdminError> {
        let list = self
            .consumer
            .fetch_group_list(Some(group), TIMEOUT)
            .map_err(kafka(format!("describing group `{group}`")))?;
        Ok(list
            .groups()
            .iter()
            .filter(|found| found.name() == group)
            .flat_map(|found| found.members())
            .map(|member| format!("{} ({})", member.client_id(), member.client_host()))
            .collect())
    }

    fn group_consumer(&self, group: &str) -> Result<BaseConsumer, AdminError> {
        let mut config = self.base.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        config
            .create()
            .map_err(kafka(format!("a client for group `{group}`")))
    }

    /// The group's committed offset of each partition of `topic` (`None`: nothing committed).
    pub fn committed(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<BTreeMap<i32, Option<i64>>, AdminError> {
        let consumer = self.group_consumer(group)?;
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(topic, partition);
        }
        let committed = consumer
            .committed_offsets(list, TIMEOUT)
            .map_err(kafka(format!("reading the offsets of group `{group}`")))?;
        Ok(committed
            .elements()
            .iter()
            .map(|element| {
                let offset = match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                };
                (element.partition(), offset)
            })
            .collect())
    }

    /// The low and high watermarks of `topic` `partition`.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), AdminError> {
        self.consumer
            .fetch_watermarks(topic, partition, TIMEOUT)
            .map_err(kafka(format!(
                "reading the offsets of `{topic}` [{partition}]"
            )))
    }

    /// Per partition of `topic`, the first offset whose timestamp is at or after `time_ms`
    /// (`None`: no such record yet).
    pub fn offsets_for_time(
        &self,
        topic: &str,
        partitions: i32,
        time_ms: i64,
    ) -> Result<BTreeMap<i32, Option<i64>>, AdminError> {
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset(topic, partition, Offset::Offset(time_ms))
                .map_err(kafka("building an offsets-by-time request"))?;
        }
        let found = self
            .consumer
            .offsets_for_times(list, TIMEOUT)
            .map_err(kafka(format!("looking up `{topic}` offsets by time")))?;
        Ok(found
            .elements()
            .iter()
            .map(|element| {
                let offset = match element.offset() {
                    Offset::Offset(offset) if offset >= 0 => Some(offset),
                    _ => None,
                };
                (element.partition(), offset)
            })
            .collect())
    }

    /// Commits `offsets` (partition to next offset to read) of `topic` for `group`. The group
    /// must have no members (the broker refuses otherwise).
    pub fn commit(
        &self,
        group: &str,
        topic: &str,
        offsets: &BTreeMap<i32, i64>,
    ) -> Result<(), AdminError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let consumer = self.group_consumer(group)?;
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(kafka("building an offset commit"))?;
        }
        consumer
            .commit(&list, CommitMode::Sync)
            .map_err(kafka(format!(
                "committing the offsets of group `{group}` on `{topic}`"
            )))
    }

    /// Reads `topic` from `start` (partition to first offset) up to the end each partition has
    /// now, calling `visit` for each record in partition order; `visit` returns `false` to stop.
    pub fn read(
        &self,
        topic: &str,
        start: &BTreeMap<i32, i64>,
        visit: impl FnMut(AdminRecord) -> bool,
    ) -> Result<(), AdminError> {
        let ends = self.ends(topic, start.keys().copied())?;
        let ranges = start
            .iter()
            .map(|(partition, from)| (*partition, (*from, ends[partition])))
            .collect();
        self.read_range(topic, &ranges, visit)
    }

    /// The end (high watermark) of each of `partitions` of `topic` now.
    pub fn ends(
        &self,
        topic: &str,
        partitions: impl IntoIterator<Item = i32>,
    ) -> Result<BTreeMap<i32, i64>, AdminError> {
        partitions
            .into_iter()
            .map(|partition| Ok((partition, self.watermarks(topic, partition)?.1)))
            .collect()
    }

    /// [`Admin::read`] of `ranges` (partition to `(from, until)`, `until` exclusive): records
    /// written after `until` are not read, however long the read takes.
    pub fn read_range(
        &self,
        topic: &str,
        ranges: &BTreeMap<i32, (i64, i64)>,
        mut visit: impl FnMut(AdminRecord) -> bool,
    ) -> Result<(), AdminError> {
        let mut ends = BTreeMap::new();
        let mut list = TopicPartitionList::new();
        for (&partition, &(from, until)) in ranges {
            let (low, high) = self.watermarks(topic, partition)?;
            let from = from.max(low);
            let high = high.min(until);
            if from < high {
                ends.insert(partition, (from, high));
                list.add_partition_offset(topic, partition, Offset::Offset(from))
                    .map_err(kafka("building a read assignment"))?;
            }
        }
        if ends.is_empty() {
            return Ok(());
        }
        let mut config = self.base.clone();
        config
            .set("group.id", "medallion-operator-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let reader: BaseConsumer = config
            .create()
            .map_err(kafka(format!("a reader of `{topic}`")))?;
        reader
            .assign(&list)
            .map_err(kafka(format!("assigning `{topic}`")))?;
        let mut last_progress = Instant::now();
        while !ends.is_empty() {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    let partition = message.partition();
                    let Some(&(_, end)) = ends.get(&partition) else {
                        continue;
                    };
                    if message.offset() >= end {
                        ends.remove(&partition);
                        continue;
                    }
                    let headers = message.headers().map_or_else(Vec::new, |headers| {
                        headers
                            .iter()
                            .map(|header| (header.key.to_owned(), header.value.map(<[u8]>::to_vec)))
                            .collect()
                    });
                    let record = AdminRecord {
                        partition,
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        headers,
                    };
                    if message.offset() + 1 >= end {
                        ends.remove(&partition);
                    }
                    if !visit(record) {
                        return Ok(());
                    }
                }
                Some(Err(error)) => {
                    return Err(AdminError::Kafka {
                        what: format!("reading `{topic}`"),
                        source: error,
                    })
                }
                None => {
                    if last_progress.elapsed() > TIMEOUT {
                        let (&partition, &(from, end)) =
                            ends.iter().next().expect("a partition is still open");
                        let offset = reader
                            .position()
                            .ok()
                            .and_then(|positions| {
                                positions
                                    .find_partition(topic, partition)
                                    .and_then(|element| element.offset().to_raw())
                            })
                            .unwrap_or(from);
                        return Err(AdminError::Stalled {
                            topic: topic.to_owned(),
                            partition,
                            offset,
                            end,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A writer of records with the runtime's producer guarantees.
    pub fn writer(&self, producer: &ProducerConfig) -> Result<RecordWriter, AdminError> {
        let mut config = self.base.clone();
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", producer.compression.as_str())
            .set("linger.ms", producer.linger_ms.to_string())
            // An operator command must end: its writes time out after the stages' watch over
            // unanswered writes, or after 30 s when that is off (0).
            .set(
                "message.timeout.ms",
                match producer.message_timeout_ms {
                    0 => COMMAND_MESSAGE_TIMEOUT_MS,
                    bounded => bounded,
                }
                .to_string(),
            );
        for (name, value) in &producer.librdkafka.0 {
            config.set(name, value);
        }
        let producer: FutureProducer = config.create().map_err(kafka("a producer"))?;
        Ok(RecordWriter { producer })
    }
}

/// How long an operator command's write may take when the stages' `producer.message_timeout_ms`
/// is 0 (unanswered writes never count as an outage).
const COMMAND_MESSAGE_TIMEOUT_MS: u64 = 30_000;

fn options() -> AdminOptions {
    AdminOptions::new().request_timeout(Some(TIMEOUT))
}

/// Writes records to chosen partitions, each acknowledged (`acks=all`, idempotent) before
/// [`RecordWriter::send`] returns.
#[derive(Clone)]
pub struct RecordWriter {
    producer: FutureProducer,
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter").finish_non_exhaustive()
    }
}

impl RecordWriter {
    /// Writes one record to `topic` `partition` and waits for its acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[Header],
    ) -> Result<(), AdminError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(KafkaHeader {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).partition(partition).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(source, _)| AdminError::Kafka {
                what: format!("writing to `{topic}` [{partition}]"),
                source,
            })
    }
}
