//! A sink processor ([`Processor::FLUSHES`]) on the real broker, in-process: while its flush
//! fails transiently (the sink is down) the worker pauses, commits nothing, writes nothing,
//! dead-letters nothing and says `sink unavailable`; once the sink is back every record is
//! stored exactly once, outputs keep their input order, the records the sink refuses are
//! dead-lettered, and every offset is committed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medallion_core::dlq::header;
use medallion_core::health::NotReady;
use medallion_core::{InputRecord, ProcessContext, ProcessError, Processor, Refused, Runtime};
use medallion_tests::passthrough::{load_config, Decoded, PassThrough, SRC_OFFSET, SRC_PARTITION};
use medallion_tests::{
    committed_offsets, create_topics, generate_events, high_watermarks, produce_events,
    read_all_async, real_broker, unique_name, wait_until,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const RECORDS: u64 = 300;

/// The sink both the test and the processor see.
#[derive(Debug, Default)]
struct Sink {
    up: AtomicBool,
    /// Event ids the sink refuses (bad rows).
    refuses: HashSet<Uuid>,
    /// What flushes stored, in order.
    stored: Mutex<Vec<Uuid>>,
    flushes_failed: Mutex<u32>,
}

/// The pass-through, plus a batch of event ids made durable by `flush`.
struct SinkPassThrough {
    inner: PassThrough,
    sink: Arc<Sink>,
    batch: Vec<(i32, i64, Uuid)>,
}

impl Processor for SinkPassThrough {
    type Input = Decoded;
    const FLUSHES: bool = true;

    fn output_topics(&self) -> Vec<Arc<str>> {
        self.inner.output_topics()
    }

    async fn decode(&mut self, record: &InputRecord<'_>) -> Result<Decoded, ProcessError> {
        self.inner.decode(record).await
    }

    fn event_id(&self, input: &Decoded) -> Option<Uuid> {
        self.inner.event_id(input)
    }

    fn process(
        &mut self,
        input: Decoded,
        ctx: &mut ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let event_id = self.inner.event_id(&input).expect("test events have ids");
        self.batch.push((ctx.partition(), ctx.offset(), event_id));
        self.inner.process(input, ctx)
    }

    async fn flush(&mut self) -> Result<Vec<Refused>, ProcessError> {
        if !self.sink.up.load(Ordering::SeqCst) {
            *self.sink.flushes_failed.lock().expect("lock") += 1;
            return Err(ProcessError::transient(
                "sink_down",
                "the test sink is down",
            ));
        }
        let mut refused = Vec::new();
        let mut stored = self.sink.stored.lock().expect("lock");
        for (partition, offset, event_id) in self.batch.drain(..) {
            if self.sink.refuses.contains(&event_id) {
                refused.push(Refused {
                    partition,
                    offset,
                    error: ProcessError::permanent("sink_refused", "the test sink refused it"),
                });
            } else {
                stored.push(event_id);
            }
        }
        Ok(refused)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_outage_pauses_without_loss_then_resumes() {
    let bootstrap = real_broker();
    let input = unique_name("sink.in");
    let output = unique_name("sink.out");
    let dlq = format!("{input}.dlq");
    let group = unique_name("sink");
    create_topics(
        &bootstrap,
        &[
            (&input, PARTITIONS),
            (&output, PARTITIONS),
            (&dlq, PARTITIONS),
        ],
    )
    .await
    .expect("topics");
    let events = generate_events(RECORDS, 6, 200);
    produce_events(&bootstrap, &input, PARTITIONS, &events)
        .await
        .expect("input produced");
    let refused: HashSet<Uuid> = [events[10].event_id, events[200].event_id].into();
    let sink = Arc::new(Sink {
        refuses: refused.clone(),
        ..Sink::default()
    });

    let env: HashMap<String, String> = HashMap::from([
        (
            "MEDALLION__KAFKA__BOOTSTRAP_SERVERS".into(),
            bootstrap.clone(),
        ),
        ("MEDALLION__CONSUMER__INPUT_TOPIC".into(), input.clone()),
        ("MEDALLION__CONSUMER__GROUP_ID".into(), group.clone()),
        (
            "MEDALLION__CONSUMER__COMMIT_INTERVAL_MS".into(),
            "100".into(),
        ),
        ("MEDALLION__STAGE__OUTPUT_TOPIC".into(), output.clone()),
        ("MEDALLION__WORKER__INSTANCE".into(), "sink-worker".into()),
        ("MEDALLION__RETRY__INITIAL_BACKOFF_MS".into(), "50".into()),
        ("MEDALLION__RETRY__MAX_BACKOFF_MS".into(), "200".into()),
    ]);
    let config = load_config(None, &env).expect("valid test configuration");
    let runtime = Runtime::new(&config);
    let metrics = runtime.metrics();
    let shutdown = CancellationToken::new();
    let processor = SinkPassThrough {
        inner: PassThrough::new(&output),
        sink: Arc::clone(&sink),
        batch: Vec::new(),
    };
    let handle = tokio::spawn(runtime.run(processor, shutdown.clone()));

    // The sink is down: the worker keeps trying, and says so, but nothing moves.
    assert!(
        wait_until(Duration::from_secs(60), || {
            *sink.flushes_failed.lock().expect("lock") >= 3
                && metrics.health.readiness() == Err(NotReady::SinkUnavailable)
        })
        .await,
        "the worker retries the flush and reports the sink unavailable"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metrics.health.readiness(), Err(NotReady::SinkUnavailable));
    let sum = |map: HashMap<i32, i64>| map.values().sum::<i64>();
    let committed = |group: &str| {
        sum(committed_offsets(&bootstrap, group, &input, PARTITIONS).expect("committed"))
    };
    assert_eq!(
        committed(&group),
        0,
        "nothing committed while the sink is down"
    );
    assert_eq!(
        sum(high_watermarks(&bootstrap, &output, PARTITIONS).expect("marks")),
        0,
        "no output written before its flush"
    );
    assert_eq!(
        sum(high_watermarks(&bootstrap, &dlq, PARTITIONS).expect("marks")),
        0
    );
    assert!(sink.stored.lock().expect("lock").is_empty());

    // The sink is back: everything goes through, once.
    sink.up.store(true, Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(60), || committed(&group)
            == RECORDS as i64)
        .await,
        "every offset committed once the sink is back"
    );
    assert_eq!(metrics.health.readiness(), Ok(()));
    let stored = sink.stored.lock().expect("lock").clone();
    let unique: HashSet<Uuid> = stored.iter().copied().collect();
    assert_eq!(stored.len(), unique.len(), "each record stored once");
    let expected: HashSet<Uuid> = events
        .iter()
        .map(|event| event.event_id)
        .filter(|id| !refused.contains(id))
        .collect();
    assert_eq!(unique, expected);

    let outputs = read_all_async(
        &bootstrap,
        &output,
        expected.len(),
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(outputs.len(), expected.len(), "an output per stored record");
    let mut last: HashMap<i32, i64> = HashMap::new();
    for record in &outputs {
        let number = |name: &str| -> i64 {
            record
                .header(name)
                .and_then(|value| value.parse().ok())
                .expect("source header")
        };
        let (partition, offset) = (number(SRC_PARTITION) as i32, number(SRC_OFFSET));
        let previous = last.insert(partition, offset);
        assert!(
            previous.is_none_or(|previous| previous < offset),
            "input order kept in partition {partition}"
        );
    }
    let dead = read_all_async(
        &bootstrap,
        &dlq,
        2,
        Duration::from_secs(1),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(dead.len(), 2, "the refused records are dead-lettered");
    for record in &dead {
        assert_eq!(record.header(header::ERROR_CODE), Some("sink_refused"));
    }

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("worker stops in time")
        .expect("worker task")
        .expect("worker ends cleanly");
}
