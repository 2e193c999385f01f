//! The `notification-sender` binary on the real broker against a local HTTP receiver: alerts
//! reach their routes' channels once each (a signed webhook with `Idempotency-Key`, a
//! Slack-style channel that answers 503 with `Retry-After: 2` once, then 200), a 400 dead-letters its alert with the
//! status, an alert no route matches is only counted; through a SIGKILL, repeated alerts (as the
//! rule evaluator writes them again after a restart) and a replay of the whole topic, nothing is
//! delivered twice; every delivery is on `audit.events`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use medallion_contracts::registry::EmbeddedRegistry;
use medallion_contracts::types::{Alert, AuditEntry, EntityRef, EventSource};
use medallion_contracts::{Contract, Decoder, Encoder, Envelope, Registry};
use medallion_notification_sender::{signature, IDEMPOTENCY_HEADER, SIGNATURE_HEADER};
use medallion_tests::process::{stage_binary, StageProcess};
use medallion_tests::{
    committed_offsets, create_topics, high_watermarks, http_get, produce_raw, read_all_async,
    real_broker, test_producer, unique_name, wait_until,
};
use uuid::Uuid;

const PARTITIONS: i32 = 3;
const SECRET: &str = "test-webhook-secret";

/// One request the receiver took: path, idempotency key, signature, body.
type Received = (String, String, Option<String>, Vec<u8>);

#[derive(Default)]
struct Receiver {
    accepted: Mutex<Vec<Received>>,
    flaky_calls: AtomicU32,
    bad_calls: AtomicU32,
    /// When the flaky channel answered 503 with `Retry-After: 2`, and when it was called again.
    flaky_first: Mutex<Option<Instant>>,
    flaky_second: Mutex<Option<Instant>>,
    /// When each request to the rate-limited `ok` channel arrived.
    ok_times: Mutex<Vec<Instant>>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    match path.as_str() {
        "flaky" if receiver.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 => {
            let first = Instant::now();
            *receiver.flaky_first.lock().expect("lock") = Some(first);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "2")],
                "warming up",
            )
                .into_response();
        }
        "flaky" => {
            *receiver.flaky_second.lock().expect("lock") = Some(Instant::now());
        }
        "bad" => {
            receiver.bad_calls.fetch_add(1, Ordering::SeqCst);
            return (StatusCode::BAD_REQUEST, "unknown team").into_response();
        }
        "ok" => receiver.ok_times.lock().expect("lock").push(Instant::now()),
        _ => {}
    }
    receiver.accepted.lock().expect("lock").push((
        path,
        header(IDEMPOTENCY_HEADER).unwrap_or_default(),
        header(SIGNATURE_HEADER),
        body.to_vec(),
    ));
    (StatusCode::OK, "ok").into_response()
}

fn alert(n: u128, rule_id: &str, severity: &str) -> Envelope<Alert> {
    let alert_id = Uuid::from_u128(0xa1e7 << 64 | n);
    Envelope::new(
        alert_id,
        1_796_112_000_000 + n as i64,
        EventSource {
            service: "rule-evaluator".into(),
            instance: "rule-evaluator-0".into(),
        },
        1 + (n % 3) as i64,
        Alert {
            alert_id,
            rule_id: rule_id.into(),
            rule_version: 1,
            severity: severity.into(),
            metric: "clicks".into(),
            operator: "gt".into(),
            threshold: 10.0,
            observed_value: 50.0,
            entity: EntityRef {
                kind: "campaign".into(),
                id: format!("cmp-{n}"),
                name: None,
                attributes: Default::default(),
            },
            window_start: 0,
            window_end: 300_000,
            message: format!("clicks 50 > 10 for campaign cmp-{n}"),
        },
    )
}

/// One test's topics on the real broker, and the sender's process over them.
struct Run {
    bootstrap: String,
    alerts: String,
    dlq: String,
    audit: String,
    summaries: String,
    encoder: Encoder<Alert>,
    embedded: Arc<EmbeddedRegistry>,
}

impl Run {
    async fn new(prefix: &str) -> Self {
        let bootstrap = real_broker();
        let run = unique_name(prefix).replace('-', "");
        let alerts = format!("rules.alerts.triggered.{run}");
        let dlq = format!("{alerts}.dlq");
        let audit = format!("audit.events.{run}");
        let summaries = format!("etl.execution.{run}");
        create_topics(
            &bootstrap,
            &[
                (&alerts, PARTITIONS),
                (&dlq, PARTITIONS),
                (&audit, PARTITIONS),
                (&summaries, 1),
            ],
        )
        .await
        .expect("topics");
        let embedded = Arc::new(EmbeddedRegistry::with_compiled_in());
        let encoder =
            Encoder::<Alert>::with_id(embedded.current_id(Alert::TOPIC).expect("compiled in"));
        Self {
            bootstrap,
            alerts,
            dlq,
            audit,
            summaries,
            encoder,
            embedded,
        }
    }

    async fn produce(&self, events: &[Envelope<Alert>]) {
        let values: Vec<(i64, Vec<u8>)> = events
            .iter()
            .map(|event| (event.org_id, self.encoder.encode(event).expect("encode")))
            .collect();
        let producer = test_producer(&self.bootstrap).expect("producer");
        produce_raw(
            &producer,
            &self.alerts,
            PARTITIONS,
            values.iter().map(|(org, value)| (*org, value.as_slice())),
        )
        .await
        .expect("alerts produced");
    }

    /// The sender in group `group`, its ledger at `store`, its channels in `notifications`.
    fn spawn(
        &self,
        group: &str,
        store: &str,
        notifications: &std::path::Path,
        label: &str,
    ) -> StageProcess {
        let envs = [
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS",
                self.bootstrap.clone(),
            ),
            ("MEDALLION__KAFKA__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "4000".to_owned()),
            ("MEDALLION__CONSUMER__INPUT_TOPIC", self.alerts.clone()),
            ("MEDALLION__CONSUMER__GROUP_ID", group.to_owned()),
            ("MEDALLION__SUMMARY__TOPIC", self.summaries.clone()),
            ("MEDALLION__STAGE__AUDIT_TOPIC", self.audit.clone()),
            ("MEDALLION__STAGE__STORE__URL", store.to_owned()),
            (
                "MEDALLION__STAGE__NOTIFICATIONS_FILE",
                notifications.display().to_string(),
            ),
            ("MEDALLION__RETRY__MAX_BACKOFF_MS", "1000".to_owned()),
            // A channel failing longer than 1 s pauses the stage (the flaky one asks for 2 s).
            ("MEDALLION__STAGE__OUTAGE_AFTER_MS", "1000".to_owned()),
            ("MEDALLION_TEST_WEBHOOK_SECRET", SECRET.to_owned()),
        ];
        StageProcess::spawn(&stage_binary("notification-sender"), &envs, label)
    }

    fn dead_letters(&self) -> i64 {
        high_watermarks(&self.bootstrap, &self.dlq, PARTITIONS)
            .expect("marks")
            .values()
            .sum()
    }

    fn committed(&self, group: &str) -> i64 {
        committed_offsets(&self.bootstrap, group, &self.alerts, PARTITIONS)
            .expect("committed")
            .values()
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_their_channels_once_through_a_kill_repeats_and_a_replay() {
    let run = Run::new("notify").await;

    let receiver = Arc::new(Receiver::default());
    let app = Router::new()
        .route("/{path}", post(receive))
        .with_state(Arc::clone(&receiver));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let notifications = dir.path().join("notifications.toml");
    std::fs::write(
        &notifications,
        format!(
            r#"
[[channels]]
name = "ops"
kind = "webhook"
url = "http://127.0.0.1:{port}/ok"
secret_env = "MEDALLION_TEST_WEBHOOK_SECRET"
headers = {{ "X-Team" = "ops" }}
max_per_minute = 300

[[channels]]
name = "chat"
kind = "slack"
url = "http://127.0.0.1:{port}/flaky"

[[channels]]
name = "broken"
kind = "webhook"
url = "http://127.0.0.1:{port}/bad"

[[routes]]
severities = ["critical"]
channels = ["ops"]

[[routes]]
rules = ["chatty"]
channels = ["chat"]

[[routes]]
rules = ["misrouted"]
channels = ["broken"]
"#
        ),
    )
    .expect("notifications file");

    let mut first: Vec<Envelope<Alert>> = (0..10).map(|n| alert(n, "hot", "critical")).collect();
    first.push(alert(100, "chatty", "warning"));
    first.push(alert(101, "misrouted", "info"));
    first.push(alert(102, "nobody-listens", "info"));
    run.produce(&first).await;

    let store = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let spawn = |group: &str, label: &str| run.spawn(group, &store, &notifications, label);
    let accepted = |path: &str| {
        receiver
            .accepted
            .lock()
            .expect("lock")
            .iter()
            .filter(|(p, ..)| p == path)
            .count()
    };
    let dead_letters = || run.dead_letters();

    let group = unique_name("notification-sender");
    let mut sender = spawn(&group, "notification-sender-1");
    // While the flaky channel waits out its Retry-After (longer than the outage threshold), the
    // stage is paused and says so.
    let ready_url = sender.http_url("/readyz");
    let mut saw_outage = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(accepted("ok") == 10 && accepted("flaky") == 1) && Instant::now() < deadline {
        let (status, body) = http_get(&ready_url).await;
        saw_outage |= status == 503 && body.contains("sink unavailable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted("ok") == 10 && accepted("flaky") == 1,
        "the webhook gets 10 alerts and the flaky channel its one after a 503"
    );
    assert!(saw_outage, "readiness did not report the channel outage");
    let mut ready = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready && Instant::now() < deadline {
        ready = http_get(&ready_url).await.0 == 200;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "ready again once the channel answered");
    assert!(
        wait_until(Duration::from_secs(30), || dead_letters() == 1).await,
        "the 400 is dead-lettered"
    );
    assert_eq!(
        receiver.flaky_calls.load(Ordering::SeqCst),
        2,
        "503 once, then 200"
    );
    let (first, second) = (
        receiver
            .flaky_first
            .lock()
            .expect("lock")
            .expect("first call"),
        receiver
            .flaky_second
            .lock()
            .expect("lock")
            .expect("second call"),
    );
    assert!(
        second.duration_since(first) >= Duration::from_millis(1_900),
        "Retry-After: 2 is honoured ({:?})",
        second.duration_since(first)
    );
    sender.kill();
    // Tansu hands a dead member's partitions to a new one only when it joins after the dead
    // one's session expired (README, Tests): the restarted pod comes up a session later.
    tokio::time::sleep(Duration::from_millis(6_500)).await;

    // The rule evaluator restarted: it writes the first ten alerts again, then ten new ones.
    let mut second: Vec<Envelope<Alert>> = (0..10).map(|n| alert(n, "hot", "critical")).collect();
    second.extend((10..20).map(|n| alert(n, "hot", "critical")));
    run.produce(&second).await;
    let mut sender = spawn(&group, "notification-sender-2");
    assert!(
        wait_until(Duration::from_secs(60), || accepted("ok") >= 20).await,
        "the ten new alerts arrive"
    );
    assert!(
        wait_until(Duration::from_secs(60), || run.committed(&group) == 33).await,
        "every alert's offset committed"
    );
    let (status, _) = sender.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");

    // A replay of the whole topic delivers nothing again: the ledger says it was done.
    let replay = unique_name("notification-replay");
    let mut sender = spawn(&replay, "notification-sender-replay");
    assert!(
        wait_until(Duration::from_secs(60), || run.committed(&replay) == 33).await,
        "the replay reads the whole topic"
    );
    let (status, _) = sender.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");

    let received = receiver.accepted.lock().expect("lock").clone();
    let webhook: Vec<&Received> = received.iter().filter(|(path, ..)| path == "ok").collect();
    let keys: HashSet<&str> = webhook.iter().map(|(_, key, ..)| key.as_str()).collect();
    assert_eq!(webhook.len(), 20, "each alert once at the webhook");
    // max_per_minute = 300: at least 200 ms between two requests (a little less on arrival).
    let times = receiver.ok_times.lock().expect("lock").clone();
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(150),
            "the rate limit let two requests through {gap:?} apart"
        );
    }
    assert_eq!(keys.len(), 20);
    for (_, key, signed, body) in &webhook {
        let json: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
        assert_eq!(
            json["alert_id"].as_str(),
            Some(key.as_str()),
            "Idempotency-Key is the alert id"
        );
        assert_eq!(
            signed.as_deref(),
            Some(signature(SECRET.as_bytes(), body).as_str())
        );
    }
    assert_eq!(accepted("flaky"), 1, "the chat channel got its alert once");
    let chat = received
        .iter()
        .find(|(path, ..)| path == "flaky")
        .expect("chat");
    let text: serde_json::Value = serde_json::from_slice(&chat.3).expect("slack body");
    assert!(
        text["text"].as_str().is_some_and(|t| t.contains("chatty")),
        "{text}"
    );

    let dead = read_all_async(
        &run.bootstrap,
        &run.dlq,
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    assert!(dead.iter().all(|record| record
        .header(medallion_core::dlq::header::ERROR_MESSAGE)
        .is_some_and(|message| message.contains("status 400") && message.contains("broken"))));

    let audited = read_all_async(
        &run.bootstrap,
        &run.audit,
        21,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    let decoder = Decoder::<AuditEntry>::new(Registry::Embedded(Arc::clone(&run.embedded)));
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut delivered_ids = HashSet::new();
    for record in &audited {
        let event = decoder
            .decode(record.payload.as_deref().expect("value"))
            .await
            .expect("audit decodes");
        if event.payload.outcome == "delivered" {
            delivered_ids.insert(event.event_id);
        }
        *outcomes.entry(event.payload.action).or_default() += 1;
    }
    assert_eq!(
        delivered_ids.len(),
        21,
        "a delivery record per delivery: {outcomes:?}"
    );
    assert!(
        outcomes
            .get("notification.rejected")
            .is_some_and(|n| *n >= 1),
        "{outcomes:?}"
    );
}

/// A small SMTP server: takes every message, refuses recipients at `bounce.example.com` with 550.
async fn smtp_sink(mail: Arc<Mutex<Vec<String>>>) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let mail = Arc::clone(&mail);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(message) = data.as_mut() {
                        if line == "." {
                            mail.lock().expect("lock").push(std::mem::take(message));
                            data = None;
                            let _ = write.write_all(b"250 queued\r\n").await;
                        } else {
                            message.push_str(&line);
                            message.push('\n');
                        }
                        continue;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250 sink\r\n"
                    } else if upper.starts_with("RCPT") && upper.contains("BOUNCE.EXAMPLE.COM") {
                        b"550 no such mailbox\r\n"
                    } else if upper.starts_with("DATA") {
                        data = Some(String::new());
                        b"354 go on\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_route_sends_mail_and_a_refused_recipient_is_dead_lettered() {
    let run = Run::new("mail").await;
    let mail = Arc::new(Mutex::new(Vec::new()));
    let port = smtp_sink(Arc::clone(&mail)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let notifications = dir.path().join("notifications.toml");
    std::fs::write(
        &notifications,
        format!(
            r#"
[[channels]]
name = "ops-mail"
kind = "email"
url = "smtp://127.0.0.1:{port}"
starttls = false
from = "medallion@example.com"
to = ["ops@example.com"]

[[channels]]
name = "bounce-mail"
kind = "email"
url = "smtp://127.0.0.1:{port}"
starttls = false
from = "medallion@example.com"
to = ["nobody@bounce.example.com"]

[[routes]]
rules = ["mail-me"]
channels = ["ops-mail"]

[[routes]]
rules = ["bounce-me"]
channels = ["bounce-mail"]
"#
        ),
    )
    .expect("notifications file");
    let events = [
        alert(1, "mail-me", "critical"),
        alert(2, "mail-me", "warning"),
        alert(3, "bounce-me", "info"),
    ];
    run.produce(&events).await;
    let group = unique_name("notification-mail");
    let store = format!("sqlite://{}", dir.path().join("ledger.db").display());
    let mut sender = run.spawn(&group, &store, &notifications, "notification-sender-mail");
    let dead_letters = || run.dead_letters();
    assert!(
        wait_until(Duration::from_secs(60), || mail.lock().expect("lock").len()
            == 2
            && dead_letters() == 1)
        .await,
        "two mails sent, the bounced one dead-lettered"
    );
    let sent = mail.lock().expect("lock").clone();
    for text in &sent {
        assert!(
            text.contains("Subject: [") && text.contains("mail-me"),
            "{text}"
        );
        assert!(text.contains("To: ops@example.com"), "{text}");
    }
    let dead = read_all_async(
        &run.bootstrap,
        &run.dlq,
        1,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    assert!(dead[0]
        .header(medallion_core::dlq::header::ERROR_MESSAGE)
        .is_some_and(|message| message.contains("550") && message.contains("bounce-mail")));
    let (status, _) = sender.terminate();
    assert!(status.success(), "exit after SIGTERM: {status}");
}
