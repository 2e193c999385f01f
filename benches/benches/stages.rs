//! The four stage binaries on realistic records, each measured against a raw rdkafka copy loop
//! over the same records on the same broker in the same run.
//!
//! `N` connector JSON records (about 700 B each; 5 orgs, 120 campaigns, two hours of event time)
//! are written to `connector.data.raw` (gold runs 10 s windows, so that the rule evaluator has
//! tens of thousands of windows to evaluate). The raw loop copies them to a topic of its own (consume,
//! produce with the stages' producer settings, wait for every acknowledgement). Then bronze
//! reads them, silver reads bronze's output, gold silver's, the rule evaluator gold's, each a
//! separate release-build process, one at a time. For each: records/s from its first input
//! record to its last one finished, CPU-µs per input record from the process's own CPU time over
//! that span (`/proc/PID/stat`; an idle consumer's CPU before and after does not count), and
//! its peak RSS (`VmHWM`). The raw loop's figures are printed beside them, with the ratio: a
//! raw loop that is not at least 3x the stage's rate means the broker, not the stage, is the
//! bottleneck.
//!
//! Run with `scripts/bench.sh` (installs and starts a fast broker, builds the release
//! binaries), or set `MEDALLION_TEST_BOOTSTRAP` and `MEDALLION_BENCH_BIN_DIR` (where the release
//! binaries are) and run `cargo bench -p medallion-benches --bench stages`.
//! `MEDALLION_BENCH_RECORDS` sets N (default 100000: noida-db answers a fetch with whole
//! partitions, and librdkafka refuses a response over 100 MB, so keep N x 650 B below that).

#![allow(clippy::print_stdout, reason = "a benchmark reports on stdout")]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use uuid::Uuid;

use medallion_tests::bench::{cpu_time, peak_rss_mib, raw_copy_loop};
use medallion_tests::process::StageProcess;
use medallion_tests::{
    create_topics, http_get, metric_sum, produce_raw, real_broker, test_producer, unique_name,
};

const PARTITIONS: i32 = 12;
const ORGS: u64 = 5;
const CAMPAIGNS: u64 = 24;
/// 2024-12-26T08:00:00Z.
const START_MS: i64 = 1_735_200_000_000;

/// One connector record, as connectors send it.
fn connector_record(n: u64) -> (i64, Vec<u8>) {
    let org_id = 1 + (n % ORGS) as i64;
    let campaign = (n / ORGS) % CAMPAIGNS;
    let observed_at = START_MS + (n as i64) * 36;
    let impressions = 1_000 + n % 900;
    let clicks = n % 40;
    let value = json!({
        "event_id": Uuid::from_u128(0xbe_0000 << 64 | u128::from(n)).to_string(),
        "event_type": "connector.data.raw",
        "event_version": "1.0.0",
        "timestamp": "2024-12-26T12:00:00Z",
        "source": {"service": "connector-service", "instance": "connector-service-abc123"},
        "correlation_id": Uuid::from_u128(0xc0_0000 << 64 | u128::from(n)).to_string(),
        "org_id": org_id,
        "payload": {
            "connector_id": "dsp-tradedesk",
            "run_id": "9a1e4b2c-3d5f-4e6a-8b7c-0d1e2f3a4b5c",
            "entity": {"type": "campaign", "id": format!("cmp-{campaign}"), "name": " Spring Sale "},
            "observed_at": observed_at,
            "currency": "EUR",
            "metrics": {
                "impressions": impressions.to_string(),
                "clicks": clicks,
                "spend": 12.5 + (n % 100) as f64 / 10.0,
                "conversions": clicks / 10
            },
            "dimensions": {"Country": "DE ", "device": "mobile", "placement": "feed"}
        }
    });
    (org_id, serde_json::to_vec(&value).expect("json"))
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    records: u64,
    elapsed: Duration,
    cpu: Duration,
    peak_rss_mib: Option<f64>,
    out: u64,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn cpu_us_per_record(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.records.max(1) as f64
    }
}

struct Run {
    bootstrap: String,
    run: String,
    bin_dir: PathBuf,
}

impl Run {
    fn topic(&self, name: &str) -> String {
        format!("{name}.{}", self.run)
    }

    /// Runs `stage` until it has read and finished `records` input records.
    async fn stage(
        &self,
        stage: &'static str,
        input: &str,
        output: &str,
        records: u64,
    ) -> anyhow::Result<Figures> {
        let mut envs = vec![
            (
                "MEDALLION__KAFKA__BOOTSTRAP_SERVERS",
                self.bootstrap.clone(),
            ),
            ("MEDALLION__KAFKA__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("MEDALLION__CONSUMER__DRAIN_TIMEOUT_MS", "4000".to_owned()),
            ("MEDALLION__CONSUMER__INPUT_TOPIC", self.topic(input)),
            (
                "MEDALLION__CONSUMER__GROUP_ID",
                format!("{stage}-{}", self.run),
            ),
            ("MEDALLION__STAGE__OUTPUT_TOPIC", self.topic(output)),
            ("MEDALLION__SUMMARY__ENABLED", "false".to_owned()),
        ];
        if stage == "gold" {
            // 10 s windows: enough of them (about 43,000 for 100,000 records) to load the rule
            // evaluator, as in the demo.
            envs.push(("MEDALLION__STAGE__WINDOW_MS", "10000".to_owned()));
            envs.push(("MEDALLION__STAGE__GRACE_MS", "2000".to_owned()));
        }
        if stage == "rule-evaluator" {
            envs.push((
                "MEDALLION__STAGE__CHANGES_TOPIC",
                self.topic("config.changes"),
            ));
            envs.push(("MEDALLION__STAGE__AUDIT_TOPIC", self.topic("audit.events")));
        }
        let mut process = StageProcess::spawn(
            &self.bin_dir.join(stage),
            &envs,
            &format!("bench-{}-{stage}", self.run),
        );
        let pid = process.id().to_string();
        let labels = [("stage", stage)];
        let deadline = Instant::now() + Duration::from_secs(900);
        let mut started = None;
        let finished = loop {
            process.assert_running();
            anyhow::ensure!(
                Instant::now() < deadline,
                "{stage} did not finish {records} records"
            );
            let (status, text) = http_get(&process.http_url("/metrics")).await;
            if status == 200 {
                let records_in =
                    metric_sum(&text, "medallion_records_in_total", &labels).unwrap_or(0.0);
                let in_flight =
                    metric_sum(&text, "medallion_records_in_flight", &labels).unwrap_or(0.0);
                if records_in > 0.0 && started.is_none() {
                    started = Some((Instant::now(), cpu_time(&pid)?));
                }
                if records_in >= records as f64 && in_flight == 0.0 {
                    let out =
                        metric_sum(&text, "medallion_records_out_total", &labels).unwrap_or(0.0);
                    break (Instant::now(), cpu_time(&pid)?, out as u64);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (start, cpu_start) = started.context("no input")?;
        let peak = peak_rss_mib(&pid).ok();
        let (status, _) = process.terminate();
        anyhow::ensure!(status.success(), "{stage} exited with {status}");
        Ok(Figures {
            records,
            elapsed: finished.0.duration_since(start),
            cpu: finished.1.saturating_sub(cpu_start),
            peak_rss_mib: peak,
            out: finished.2,
        })
    }
}

fn line(name: &str, figures: &Figures, raw: &Figures, target_us: Option<f64>) -> String {
    // CPU time has a 10 ms resolution: a span under 200 ms says little.
    if figures.elapsed < Duration::from_millis(200) {
        return format!(
            "{name:<16} too short to measure: {} records in {} ms",
            figures.records,
            figures.elapsed.as_millis()
        );
    }
    let rss = figures
        .peak_rss_mib
        .map_or_else(|| "-".to_owned(), |mib| format!("{mib:.0}"));
    let target = target_us.map_or_else(String::new, |target| {
        let met = if figures.cpu_us_per_record() <= target {
            "met"
        } else {
            "missed"
        };
        format!("  (target <= {target} us: {met})")
    });
    format!(
        "{name:<16} {:>10.0} {:>14.1} {:>13} {:>12.2} {:>10.1}x{target}",
        figures.rate(),
        figures.cpu_us_per_record(),
        rss,
        figures.rate() / raw.rate(),
        raw.rate() / figures.rate(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|arg| arg == "--bench") {
        return Ok(());
    }
    let bootstrap = real_broker();
    let bin_dir = PathBuf::from(
        std::env::var("MEDALLION_BENCH_BIN_DIR")
            .context("MEDALLION_BENCH_BIN_DIR: the folder of the release binaries")?,
    );
    let records: u64 = std::env::var("MEDALLION_BENCH_RECORDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(100_000);
    let run = Run {
        bootstrap: bootstrap.clone(),
        run: unique_name("bench").replace('-', ""),
        bin_dir,
    };
    let mut topics = Vec::new();
    for name in [
        "connector.data.raw",
        "bronze.data.cleaned",
        "silver.data.processed",
        "gold.data.ready",
        "rules.alerts.triggered",
        "config.changes",
        "audit.events",
        "raw.copy",
    ] {
        topics.push(run.topic(name));
        topics.push(format!("{}.dlq", run.topic(name)));
    }
    let specs: Vec<(&str, i32)> = topics
        .iter()
        .map(|topic| (topic.as_str(), PARTITIONS))
        .collect();
    create_topics(&bootstrap, &specs).await?;
    let data: Vec<(i64, Vec<u8>)> = (0..records).map(connector_record).collect();
    let average = data.iter().map(|(_, value)| value.len()).sum::<usize>() / data.len().max(1);
    let producer = test_producer(&bootstrap)?;
    for chunk in data.chunks(20_000) {
        produce_raw(
            &producer,
            &run.topic("connector.data.raw"),
            PARTITIONS,
            chunk.iter().map(|(org, value)| (*org, value.as_slice())),
        )
        .await?;
    }
    println!("stages: {records} connector records of {average} B on broker {bootstrap}, one stage at a time, release builds");
    let copied = raw_copy_loop(
        &bootstrap,
        &run.topic("connector.data.raw"),
        &run.topic("raw.copy"),
        records,
    )
    .await?;
    let raw = Figures {
        records,
        elapsed: copied.elapsed,
        cpu: copied.cpu,
        peak_rss_mib: None,
        out: records,
    };
    let bronze = run
        .stage(
            "bronze",
            "connector.data.raw",
            "bronze.data.cleaned",
            records,
        )
        .await?;
    let silver = run
        .stage(
            "silver",
            "bronze.data.cleaned",
            "silver.data.processed",
            bronze.out,
        )
        .await?;
    let gold = run
        .stage(
            "gold",
            "silver.data.processed",
            "gold.data.ready",
            silver.out,
        )
        .await?;
    let rules = run
        .stage(
            "rule-evaluator",
            "gold.data.ready",
            "rules.alerts.triggered",
            gold.out,
        )
        .await?;
    println!(
        "{:<16} {:>10} {:>14} {:>13} {:>12} {:>11}",
        "", "records/s", "CPU-us/record", "peak RSS MiB", "rate vs raw", "raw / stage"
    );
    println!("{}", line("raw copy loop", &raw, &raw, None));
    println!("{}", line("bronze", &bronze, &raw, Some(10.0)));
    println!("{}", line("silver", &silver, &raw, Some(6.0)));
    println!("{}", line("gold", &gold, &raw, Some(6.0)));
    println!("{}", line("rule-evaluator", &rules, &raw, Some(5.0)));
    println!(
        "outputs: bronze {}, silver {}, gold {} windows, rule-evaluator {} alerts; a raw/stage factor below 3x means the broker bounds the stage",
        bronze.out, silver.out, gold.out, rules.out
    );
    Ok(())
}
