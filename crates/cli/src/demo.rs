//! `medallion demo`: the whole pipeline in one process on an embedded broker.
//!
//! Starts librdkafka's mock cluster (a Kafka-protocol broker in this process), creates the
//! topics, runs a synthetic connector (several orgs; a share of malformed and duplicate
//! records; entities that trip the default rules), runs bronze, silver, gold, the rule
//! evaluator, the audit writer (into a SQLite store in a temporary directory) and the
//! notification sender (every alert to a webhook receiver served in this process) with their
//! own consumer groups and the embedded schema registry, publishes one rule change (so that the
//! audit trail has a record), and redraws a one-screen summary every second until `--duration`
//! passes or Ctrl-C. Gold uses 10 s windows with 2 s grace here so windows close while you watch
//! (the stage default is 5 min / 1 min).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use medallion_audit_writer::AuditWriterStage;
use medallion_bronze::BronzeStage;
use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{Alert, ConfigChange, EventSource, RuleDefinition};
use medallion_contracts::{Contract, Decoder, Encoder, Envelope, Registry};
use medallion_core::partitioner::{java_partition, org_key};
use medallion_core::MetricsSnapshot;
use medallion_gold::GoldStage;
use medallion_notification_sender::NotificationSenderStage;
use medallion_rule_evaluator::RuleEvaluatorStage;
use medallion_silver::SilverStage;
use medallion_stage::{now_ms, Launched, Stage};
use medallion_store::{AuditFilter, AuditStore, StoreConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::Message;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The demo's knobs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Connector records per second.
    pub rate: u32,
    /// Number of orgs.
    pub orgs: i64,
    /// Stop after this long; `None`: until Ctrl-C.
    pub duration: Option<Duration>,
}

/// The partitions of `topic` in the platform's topic plan (the demo creates its topics from it).
fn planned_partitions(topic: &str) -> i32 {
    crate::topics::load_plan(None, Some(1), Some(1))
        .ok()
        .and_then(|plan| {
            plan.specs()
                .into_iter()
                .find(|spec| spec.name == topic)
                .map(|spec| spec.partitions)
        })
        .unwrap_or(1)
}

/// Starts stage `S` through the harness, as its binary would, on the embedded broker.
fn launch<S: Stage>(
    bootstrap: &str,
    extra: &[(&str, &str)],
    shutdown: &CancellationToken,
) -> anyhow::Result<Launched> {
    let mut env = HashMap::from([(
        "MEDALLION__KAFKA__BOOTSTRAP_SERVERS".to_owned(),
        format!("\"{bootstrap}\""),
    )]);
    env.insert(
        "MEDALLION__WORKER__INSTANCE".to_owned(),
        "\"demo\"".to_owned(),
    );
    // The screen refreshes every second; so does the lag it shows.
    env.insert(
        "MEDALLION__CONSUMER__LAG_INTERVAL_MS".to_owned(),
        "1000".to_owned(),
    );
    // Four stages share the process: none serves its own HTTP endpoint.
    env.insert(
        "MEDALLION__TELEMETRY__ENABLED".to_owned(),
        "false".to_owned(),
    );
    for (key, value) in extra {
        env.insert((*key).to_owned(), (*value).to_owned());
    }
    let config = medallion_stage::load_config::<S::Settings>(S::DEFAULTS, None, &env)?;
    medallion_stage::launch::<S>(config, shutdown.child_token())
}

/// Runs the demo; returns when the duration passed or on Ctrl-C.
pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    // The mock cluster is not Send: it lives on this thread, the stages on the runtime's.
    let cluster = MockCluster::new(1).context("failed to start the embedded broker")?;
    // The platform's topics, from the same plan `medallion topics apply` applies (the embedded
    // broker has one node: replication 1).
    for spec in crate::topics::load_plan(None, Some(1), Some(1))?.specs() {
        cluster
            .create_topic(&spec.name, spec.partitions, 1)
            .with_context(|| format!("failed to create topic {}", spec.name))?;
    }
    let bootstrap = cluster.bootstrap_servers();
    let store_dir = std::env::temp_dir().join(format!("medallion-demo-{}", std::process::id()));
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("failed to create {}", store_dir.display()))?;
    let store_url = format!("sqlite://{}", store_dir.join("audit.db").display());
    let notifications_file = store_dir.join("notifications.toml");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let result = runtime.block_on(run_pipeline(
        &bootstrap,
        &store_url,
        &notifications_file,
        options,
    ));
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(cluster);
    let _ = std::fs::remove_dir_all(&store_dir);
    result
}

async fn run_pipeline(
    bootstrap: &str,
    store_url: &str,
    notifications_file: &std::path::Path,
    options: &DemoOptions,
) -> anyhow::Result<()> {
    let received = Arc::new(Mutex::new(NotificationLog::default()));
    let webhook = start_webhook(Arc::clone(&received)).await?;
    std::fs::write(
        notifications_file,
        format!(
            "[[channels]]\nname = \"demo-webhook\"\nkind = \"webhook\"\nurl = \"{webhook}\"\n\n\
             [[routes]]\nchannels = [\"demo-webhook\"]\n"
        ),
    )
    .with_context(|| format!("failed to write {}", notifications_file.display()))?;
    let shutdown = medallion_core::shutdown::shutdown_on_signals();
    let registry = Registry::Embedded(Arc::new(EmbeddedRegistry::with_compiled_in()));
    let stages = vec![
        launch::<BronzeStage>(bootstrap, &[], &shutdown)?,
        launch::<SilverStage>(bootstrap, &[], &shutdown)?,
        launch::<GoldStage>(
            bootstrap,
            &[
                ("MEDALLION__STAGE__WINDOW_MS", "10000"),
                ("MEDALLION__STAGE__GRACE_MS", "2000"),
            ],
            &shutdown,
        )?,
        launch::<RuleEvaluatorStage>(bootstrap, &[], &shutdown)?,
        launch::<AuditWriterStage>(
            bootstrap,
            &[("MEDALLION__STAGE__STORE__URL", &format!("\"{store_url}\""))],
            &shutdown,
        )?,
        launch::<NotificationSenderStage>(
            bootstrap,
            &[
                ("MEDALLION__STAGE__STORE__URL", &format!("\"{store_url}\"")),
                (
                    "MEDALLION__STAGE__NOTIFICATIONS_FILE",
                    &format!("\"{}\"", notifications_file.display()),
                ),
            ],
            &shutdown,
        )?,
    ];
    publish_rule_change(bootstrap).await?;

    let produced = Arc::new(medallion_core::metrics::Counter::default());
    let connector = tokio::spawn(connector(
        bootstrap.to_owned(),
        options.clone(),
        Arc::clone(&produced),
        shutdown.child_token(),
    ));
    let alerts = Arc::new(Mutex::new(AlertLog::default()));
    let watcher = tokio::spawn(watch_alerts(
        bootstrap.to_owned(),
        registry,
        Arc::clone(&alerts),
        shutdown.child_token(),
    ));

    let audit = Arc::new(Mutex::new(AuditLog::default()));
    let audit_watcher = tokio::spawn(watch_audit(
        store_url.to_owned(),
        Arc::clone(&audit),
        shutdown.child_token(),
    ));

    let started = Instant::now();
    let mut screen = Screen::new(bootstrap, options);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        screen.draw(
            started.elapsed(),
            produced.get(),
            &stages,
            &alerts,
            &audit,
            &received,
        )?;
        if options
            .duration
            .is_some_and(|limit| started.elapsed() >= limit)
        {
            shutdown.cancel();
            break;
        }
        if let Some(failed) = stages.iter().find(|stage| stage.is_finished()) {
            shutdown.cancel();
            anyhow::bail!("stage {} stopped unexpectedly", failed.name);
        }
    }
    let mut failures = Vec::new();
    for stage in stages {
        if let Err(error) = stage.join().await {
            failures.push(format!("{error:#}"));
        }
    }
    let _ = connector.await;
    let _ = watcher.await;
    let _ = audit_watcher.await;
    screen.final_line(started.elapsed(), produced.get());
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(failures.join("; "))
    }
}

/// The synthetic connector: `rate` records per second for `orgs` orgs.
async fn connector(
    bootstrap: String,
    options: DemoOptions,
    produced: Arc<medallion_core::metrics::Counter>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .context("failed to create the demo connector's producer")?;
    let mut rng = fastrand::Rng::with_seed(42);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let per_tick = (options.rate / 10).max(1);
    let mut previous: Option<(i64, Vec<u8>)> = None;
    let mut n = 0u64;
    let partitions = planned_partitions("connector.data.raw");
    while !shutdown.is_cancelled() {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        for _ in 0..per_tick {
            n += 1;
            let org_id = rng.i64(1..=options.orgs.max(1));
            let (org_id, value) = match rng.u8(0..100) {
                // Duplicates: a connector retrying a send.
                0..=2 if previous.is_some() => previous.clone().unwrap_or_default(),
                3 => (org_id, b"{\"event_id\": \"broken".to_vec()),
                4 => (
                    org_id,
                    demo_event(n, org_id, &mut rng, Some(json!({"likes": 3}))),
                ),
                _ => (org_id, demo_event(n, org_id, &mut rng, None)),
            };
            let key = org_key(org_id);
            let record = FutureRecord::to("connector.data.raw")
                .partition(java_partition(org_id, partitions))
                .key(&key)
                .payload(&value);
            if producer.send_result(record).is_ok() {
                produced.inc();
            }
            previous = Some((org_id, value));
        }
    }
    let _ = producer.flush(Duration::from_secs(5));
    Ok(())
}

fn demo_event(
    n: u64,
    org_id: i64,
    rng: &mut fastrand::Rng,
    metrics: Option<serde_json::Value>,
) -> Vec<u8> {
    let entity = rng.u8(1..=3);
    let sensor = org_id == 5;
    let metrics = metrics.unwrap_or_else(|| {
        if sensor {
            let hot = rng.u8(0..50) == 0;
            json!({"temperature": if hot { 85.0 } else { 20.0 + f64::from(rng.u8(0..30)) }})
        } else {
            let impressions = rng.u32(500..2_000);
            let low_ctr = org_id == 1 && entity == 2;
            let clicks = if low_ctr {
                rng.u32(0..2)
            } else {
                rng.u32(20..80)
            };
            let spend = if rng.u16(0..4_000) == 0 {
                20_000.0
            } else {
                f64::from(rng.u16(100..5_000)) / 100.0
            };
            json!({"impressions": impressions.to_string(), "clicks": clicks, "spend": spend})
        }
    });
    let value = json!({
        "event_id": uuid::Uuid::new_v5(&medallion_core::ids::NAMESPACE, format!("demo-{n}").as_bytes()).to_string(),
        "event_type": "connector.data.raw",
        "event_version": "1.0.0",
        "timestamp": now_ms(),
        "source": {"service": "demo-connector", "instance": "demo"},
        "org_id": org_id,
        "payload": {
            "connector_id": if sensor { "sensor-gateway" } else { "dsp-demo" },
            "run_id": "demo",
            "entity": {"type": if sensor { "sensor" } else { "campaign" }, "id": if sensor { format!("s-{entity}") } else { format!("cmp-{entity}") }},
            "observed_at": now_ms() - i64::from(rng.u16(0..1_000)),
            "currency": if org_id % 2 == 0 { "USD" } else { "EUR" },
            "metrics": metrics,
        }
    });
    serde_json::to_vec(&value).unwrap_or_default()
}

/// One rule change, as an admin tool would publish it: a rule that never fires (its threshold is
/// out of reach), so the demo's alerts stay the default rules', and the audit trail gets a record.
async fn publish_rule_change(bootstrap: &str) -> anyhow::Result<()> {
    let embedded = EmbeddedRegistry::with_compiled_in();
    let id = embedded
        .current_id(ConfigChange::TOPIC)
        .context("no compiled-in schema for config.changes")?;
    let event = Envelope::new(
        uuid::Uuid::new_v4(),
        now_ms(),
        EventSource {
            service: "medallion-demo".into(),
            instance: "demo".into(),
        },
        1,
        ConfigChange {
            kind: "rule".into(),
            action: "upsert".into(),
            rule_id: "demo-clicks-ceiling".into(),
            version: 1,
            rule: Some(RuleDefinition {
                metric: "clicks".into(),
                operator: "gt".into(),
                threshold: 1e12,
                scope: "org".into(),
                severity: "info".into(),
                cooldown_ms: 0,
                enabled: true,
            }),
            changed_by: Some("demo@medallion.example".into()),
            replay: None,
        },
    );
    let value = Encoder::<ConfigChange>::with_id(id).encode(&event)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("failed to create the demo's admin producer")?;
    let key = org_key(1);
    producer
        .send(
            FutureRecord::to(ConfigChange::TOPIC)
                .partition(java_partition(1, planned_partitions(ConfigChange::TOPIC)))
                .key(&key)
                .payload(&value),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| {
            anyhow::anyhow!("failed to publish the demo's rule change: {error}")
        })?;
    Ok(())
}

#[derive(Debug, Default)]
struct NotificationLog {
    total: u64,
    recent: VecDeque<String>,
}

/// Serves the demo's webhook receiver on a free loopback port; returns its URL.
async fn start_webhook(log: Arc<Mutex<NotificationLog>>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("failed to bind the demo's webhook receiver")?;
    let address = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |body: axum::body::Bytes| {
            let log = Arc::clone(&log);
            async move {
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let line = format!(
                    "{:<16} org {:<3} {} {}",
                    json["rule_id"].as_str().unwrap_or("?"),
                    json["org_id"],
                    json["entity"]["type"].as_str().unwrap_or("?"),
                    json["entity"]["id"].as_str().unwrap_or("?"),
                );
                let mut log = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                log.total += 1;
                log.recent.push_front(line);
                log.recent.truncate(4);
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{address}/alerts"))
}

#[derive(Debug, Default)]
struct AuditLog {
    total: usize,
    /// Records by action, as `action count, ...`.
    by_action: String,
    recent: Vec<String>,
}

/// Reads the audit store every second: the latest rows, for the screen.
async fn watch_audit(
    store_url: String,
    log: Arc<Mutex<AuditLog>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = StoreConfig {
        url: store_url,
        ..StoreConfig::default()
    };
    let mut store = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        // The audit writer creates the store; until it has, there is nothing to show.
        if store.is_none() {
            store = AuditStore::connect(&config).await.ok();
        }
        let Some(store) = &store else { continue };
        let filter = AuditFilter {
            limit: 1_000,
            ..AuditFilter::default()
        };
        let Ok(rows) = store.query(&filter).await else {
            continue;
        };
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.total = rows.len();
        let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for row in &rows {
            *counts.entry(row.action.as_str()).or_default() += 1;
        }
        log.by_action = counts
            .iter()
            .map(|(action, count)| format!("{action} {count}"))
            .collect::<Vec<_>>()
            .join(", ");
        log.recent = rows
            .iter()
            .take(4)
            .map(|row| {
                format!(
                    "{:<12} {:<24} {}/{} {}",
                    row.action, row.actor, row.target_type, row.target_id, row.outcome
                )
            })
            .collect();
    }
}

#[derive(Debug, Default)]
struct AlertLog {
    total: u64,
    recent: VecDeque<String>,
}

async fn watch_alerts(
    bootstrap: String,
    registry: Registry,
    log: Arc<Mutex<AlertLog>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "demo-alert-watcher")
        .set("auto.offset.reset", "earliest")
        .create()
        .context("failed to create the alert watcher")?;
    consumer
        .subscribe(&["rules.alerts.triggered"])
        .context("failed to subscribe to alerts")?;
    let decoder = Decoder::<Alert>::new(registry);
    let mut seen = std::collections::HashSet::new();
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        let Ok(message) = message else { continue };
        let Ok(event) = decoder.decode(message.payload().unwrap_or_default()).await else {
            continue;
        };
        if !seen.insert(event.event_id) {
            continue;
        }
        let alert = event.payload;
        let line = format!(
            "{:<8} {:<16} org {:<3} {} {:<6} {} {:.4} ({} {})",
            alert.severity,
            alert.rule_id,
            event.org_id,
            alert.entity.kind,
            alert.entity.id,
            alert.metric,
            alert.observed_value,
            alert.operator,
            alert.threshold
        );
        let mut log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        log.total += 1;
        log.recent.push_front(line);
        log.recent.truncate(8);
    }
}

struct Screen {
    header: String,
    terminal: bool,
    previous: HashMap<&'static str, MetricsSnapshot>,
    previous_produced: u64,
    last_plain: Option<Instant>,
}

impl Screen {
    fn new(bootstrap: &str, options: &DemoOptions) -> Self {
        Self {
            header: format!(
                "medallion demo: embedded broker {bootstrap}, {} records/s, {} orgs, gold windows 10 s (grace 2 s); Ctrl-C stops",
                options.rate, options.orgs
            ),
            terminal: std::io::stdout().is_terminal(),
            previous: HashMap::new(),
            previous_produced: 0,
            last_plain: None,
        }
    }

    fn draw(
        &mut self,
        elapsed: Duration,
        produced: u64,
        stages: &[Launched],
        alerts: &Mutex<AlertLog>,
        audit: &Mutex<AuditLog>,
        received: &Mutex<NotificationLog>,
    ) -> anyhow::Result<()> {
        // Off a terminal (CI, a pipe), print a plain block every 5 s instead of redrawing.
        if !self.terminal
            && self
                .last_plain
                .is_some_and(|last| last.elapsed() < Duration::from_secs(5))
        {
            return Ok(());
        }
        let seconds = self
            .last_plain
            .map_or(1.0, |last| last.elapsed().as_secs_f64().max(0.001));
        let per_second = |delta: u64| (delta as f64 / seconds).round() as u64;
        self.last_plain = Some(Instant::now());
        let mut text = String::new();
        if self.terminal {
            text.push_str("\x1b[2J\x1b[H");
        }
        let _ = writeln!(text, "{}", self.header);
        let _ = writeln!(text, "elapsed {:>4} s", elapsed.as_secs());
        let _ = writeln!(
            text,
            "{:<20} {:>8} {:>8} {:>10} {:>10} {:>7} {:>7} {:>8}",
            "stage", "in/s", "out/s", "in", "out", "dlq", "dedup", "lag"
        );
        let _ = writeln!(
            text,
            "{:<20} {:>8} {:>8} {:>10} {:>10}",
            "connector",
            "-",
            per_second(produced.saturating_sub(self.previous_produced)),
            "-",
            produced
        );
        for stage in stages {
            let now = stage.metrics.snapshot();
            let before = self.previous.get(stage.name).copied().unwrap_or_default();
            let lag = now
                .consumer_lag
                .map_or_else(|| "-".to_owned(), |lag| lag.to_string());
            let _ = writeln!(
                text,
                "{:<20} {:>8} {:>8} {:>10} {:>10} {:>7} {:>7} {:>8}",
                stage.name,
                per_second(now.records_in.saturating_sub(before.records_in)),
                per_second(now.records_out.saturating_sub(before.records_out)),
                now.records_in,
                now.records_out,
                now.dlq_records,
                now.dedup_hits,
                lag
            );
            self.previous.insert(stage.name, now);
        }
        self.previous_produced = produced;
        let log = alerts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(text, "\nalerts fired: {} (latest first)", log.total);
        for line in &log.recent {
            let _ = writeln!(text, "  {line}");
        }
        let audit = audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            text,
            "\naudit store: {} records ({}); latest first:",
            audit.total, audit.by_action
        );
        for line in &audit.recent {
            let _ = writeln!(text, "  {line}");
        }
        let received = received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            text,
            "\nnotifications received by the demo webhook: {} (latest first)",
            received.total
        );
        for line in &received.recent {
            let _ = writeln!(text, "  {line}");
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }

    fn final_line(&self, elapsed: Duration, produced: u64) {
        let _ = writeln!(
            std::io::stdout(),
            "demo stopped after {} s: {produced} connector records; stages drained and committed",
            elapsed.as_secs()
        );
    }
}
