//! `medallion dlq inspect|redrive TOPIC.dlq`: what is in a dead-letter topic, and sending
//! selected dead letters back to their source topic once their cause is fixed.
//!
//! Selection: `--code` matches `medallion.error.code`; `--since` matches the time of the last
//! failure (`medallion.failure.last`), so the whole dead-letter topic is read (14 days by
//! default) and filtered; a dead-letter record's Kafka timestamp is its source record's, not
//! when it failed.
//!
//! Redrive: each selected record goes back to the topic and partition it was read from
//! (`medallion.source.topic`, `.partition`) with its original key, value and headers (the
//! headers before the dead-letter set; an earlier redrive's headers are replaced) plus
//! `medallion.redrive.id` (this redrive) and `medallion.redrive.count` (one more than the record
//! carried). The dead-letter topic is not changed. A redriven record that fails again is
//! dead-lettered with those headers, so its count shows how often it was tried. Redriving the
//! same records twice writes them twice; the stages' outputs keep their derived `event_id`s, so
//! downstream deduplication (and consumers that upsert) see nothing new.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use medallion_core::admin::AdminRecord;
use medallion_core::dlq::{header, header_text, Header};

use crate::operator::Operator;

/// The redrive's id header.
pub const REDRIVE_ID: &str = "medallion.redrive.id";
/// How many times the record has been redriven, this time included.
pub const REDRIVE_COUNT: &str = medallion_core::dedup::REDRIVE_COUNT;

/// Which dead letters a command takes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this error code.
    pub code: Option<String>,
    /// Only records whose last failure is at or after this time (epoch ms).
    pub since_ms: Option<i64>,
}

impl Selection {
    fn matches(&self, record: &AdminRecord) -> bool {
        if let Some(code) = &self.code {
            if header_text(&record.headers, header::ERROR_CODE) != Some(code.as_str()) {
                return false;
            }
        }
        if let Some(since) = self.since_ms {
            let failed = header_text(&record.headers, header::LAST_FAILURE)
                .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
                .map(|time| time.timestamp_millis());
            if failed.is_none_or(|failed| failed < since) {
                return false;
            }
        }
        true
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(code) = &self.code {
            parts.push(format!("code {code}"));
        }
        if let Some(since) = self.since_ms {
            parts.push(format!("failed since {}", time_text(since)));
        }
        if parts.is_empty() {
            "all records".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// The source topic of dead-letter topic `dlq`, or an error saying why it is not one.
fn source_of<'a>(operator: &Operator, dlq: &'a str) -> anyhow::Result<&'a str> {
    let suffix = operator.config.dlq.topic_suffix.as_str();
    dlq.strip_suffix(suffix)
        .filter(|source| !source.is_empty())
        .with_context(|| {
            format!("`{dlq}` is not a dead-letter topic: its name does not end with `{suffix}`")
        })
}

/// Records redriven per read of the dead-letter topic: what a redrive holds in memory.
const CHUNK: usize = 500;

/// A pass over a dead-letter topic, up to the end each partition had when it started (so dead
/// letters written meanwhile, by records that failed again, are not read again).
struct Scan<'a> {
    operator: &'a Operator,
    topic: &'a str,
    /// Per partition: the next offset and the end.
    ranges: BTreeMap<i32, (i64, i64)>,
}

impl<'a> Scan<'a> {
    fn new(operator: &'a Operator, topic: &'a str) -> anyhow::Result<Self> {
        let partitions = operator.admin.partitions(topic)?;
        let ranges = operator
            .admin
            .ends(topic, 0..partitions)?
            .into_iter()
            .map(|(partition, end)| (partition, (0, end)))
            .collect();
        Ok(Self {
            operator,
            topic,
            ranges,
        })
    }

    /// Every remaining record, in one pass.
    fn each(&mut self, mut visit: impl FnMut(AdminRecord)) -> anyhow::Result<()> {
        self.operator
            .admin
            .read_range(self.topic, &self.ranges, |record| {
                visit(record);
                true
            })?;
        self.finish();
        Ok(())
    }

    /// The next `count` records `selection` takes (fewer at the end).
    fn chunk(&mut self, selection: &Selection, count: usize) -> anyhow::Result<Vec<AdminRecord>> {
        let mut chunk = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        self.operator
            .admin
            .read_range(self.topic, &self.ranges, |record| {
                next.insert(record.partition, record.offset + 1);
                if selection.matches(&record) {
                    chunk.push(record);
                }
                chunk.len() < count
            })?;
        if chunk.len() < count {
            self.finish();
        } else {
            for (partition, offset) in next {
                if let Some(range) = self.ranges.get_mut(&partition) {
                    range.0 = offset;
                }
            }
        }
        Ok(chunk)
    }

    fn finish(&mut self) {
        for range in self.ranges.values_mut() {
            range.0 = range.1;
        }
    }
}

fn label<'a>(headers: &'a [Header], name: &str) -> &'a str {
    header_text(headers, name).unwrap_or("-")
}

/// The value as an operator can read it: Avro decoded with its writer schema, JSON or text as
/// it is, else its size; at most `limit` characters.
async fn show_value(operator: &Operator, payload: Option<&[u8]>, limit: usize) -> String {
    let Some(payload) = payload else {
        return "(no value)".to_owned();
    };
    let text = if payload.first() == Some(&0) {
        match medallion_contracts::codec::to_json(&operator.registry, payload).await {
            Ok(json) => json.to_string(),
            Err(error) => format!("({} bytes; not decodable: {error})", payload.len()),
        }
    } else {
        match std::str::from_utf8(payload) {
            Ok(text) => text.to_owned(),
            Err(_) => format!("({} bytes of binary)", payload.len()),
        }
    };
    if text.chars().count() > limit {
        let cut: String = text.chars().take(limit).collect();
        format!("{cut}... ({} bytes)", payload.len())
    } else {
        text
    }
}

/// Counts of one header's values.
#[derive(Debug, Default)]
struct Tally(BTreeMap<String, usize>);

impl Tally {
    fn add(&mut self, headers: &[Header], name: &str) {
        *self.0.entry(label(headers, name).to_owned()).or_default() += 1;
    }

    /// Most frequent first.
    fn line(&self) -> String {
        let mut counts: Vec<(&String, &usize)> = self.0.iter().collect();
        counts.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let parts: Vec<String> = counts
            .into_iter()
            .map(|(value, count)| format!("{value} {count}"))
            .collect();
        parts.join(", ")
    }
}

/// Prints counts by error code, stage and org, and up to `limit` samples with their headers.
pub async fn inspect(
    operator: &Operator,
    topic: &str,
    selection: &Selection,
    limit: usize,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    source_of(operator, topic)?;
    const TALLIES: [(&str, &str); 3] = [
        ("error code", header::ERROR_CODE),
        ("stage", header::STAGE),
        ("org", header::ORG_ID),
    ];
    let mut tallies: [Tally; 3] = Default::default();
    let (mut read, mut selected) = (0usize, 0usize);
    let mut samples = Vec::new();
    Scan::new(operator, topic)?.each(|record| {
        read += 1;
        if !selection.matches(&record) {
            return;
        }
        selected += 1;
        for (tally, (_, name)) in tallies.iter_mut().zip(TALLIES) {
            tally.add(&record.headers, name);
        }
        if samples.len() < limit {
            samples.push(record);
        }
    })?;
    writeln!(
        out,
        "{topic} on {}: {selected} of {read} dead letters selected ({})",
        operator.brokers(),
        selection.describe()
    )?;
    for (tally, (title, _)) in tallies.iter().zip(TALLIES) {
        writeln!(out, "  by {title:<11} {}", tally.line())?;
    }
    for record in &samples {
        writeln!(
            out,
            "\n  partition {} offset {}:",
            record.partition, record.offset
        )?;
        for (name, value) in &record.headers {
            if name.starts_with("medallion.") {
                let value = value
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                writeln!(out, "    {name}: {value}")?;
            }
        }
        let value = show_value(operator, record.payload.as_deref(), 600).await;
        writeln!(out, "    value: {value}")?;
    }
    Ok(())
}

/// The headers a redriven record carries: its original ones (before the dead-letter set,
/// without an earlier redrive's), then this redrive's id and count.
pub fn redrive_headers(headers: &[Header], redrive_id: &str) -> Vec<Header> {
    let original_end = headers
        .iter()
        .position(|(name, _)| name == header::VERSION)
        .unwrap_or(headers.len());
    let original = &headers[..original_end];
    let previous: u32 = header_text(original, REDRIVE_COUNT)
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    let mut kept: Vec<Header> = original
        .iter()
        .filter(|(name, _)| name != REDRIVE_ID && name != REDRIVE_COUNT)
        .cloned()
        .collect();
    kept.push((REDRIVE_ID.to_owned(), Some(redrive_id.as_bytes().to_vec())));
    kept.push((
        REDRIVE_COUNT.to_owned(),
        Some((previous + 1).to_string().into_bytes()),
    ));
    kept
}

/// Sends the selected dead letters back to their source topic at `rate` records per second
/// (nothing with `dry_run`).
pub async fn redrive(
    operator: &Operator,
    topic: &str,
    selection: &Selection,
    rate: u32,
    dry_run: bool,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let source = source_of(operator, topic)?;
    let source_partitions = operator.admin.partitions(source)?;
    // Each record goes back to where it was read; one that does not say is left alone.
    let target = |record: &AdminRecord| {
        let from_topic = header_text(&record.headers, header::SOURCE_TOPIC);
        header_text(&record.headers, header::SOURCE_PARTITION)
            .and_then(|text| text.parse::<i32>().ok())
            .filter(|partition| (0..source_partitions).contains(partition))
            .filter(|_| from_topic == Some(source))
    };
    let (mut read, mut planned, mut skipped) = (0usize, 0usize, 0usize);
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    let mut scan = Scan::new(operator, topic)?;
    let mut counting = Scan {
        operator,
        topic,
        ranges: scan.ranges.clone(),
    };
    counting.each(|record| {
        read += 1;
        if !selection.matches(&record) {
            return;
        }
        match target(&record) {
            Some(partition) => {
                planned += 1;
                *per_partition.entry(partition).or_default() += 1;
            }
            None => skipped += 1,
        }
    })?;
    let redrive_id = uuid::Uuid::new_v4().to_string();
    let spread: Vec<String> = per_partition
        .iter()
        .map(|(partition, count)| format!("[{partition}] {count}"))
        .collect();
    writeln!(
        out,
        "redrive {redrive_id}: {planned} of {read} dead letters in {topic} ({}) back to {source} at up to {rate}/s",
        selection.describe()
    )?;
    writeln!(out, "  by partition: {}", spread.join(", "))?;
    if skipped > 0 {
        writeln!(
            out,
            "  {skipped} selected records name another source topic or partition and are left alone"
        )?;
    }
    if dry_run {
        writeln!(out, "dry run: nothing written")?;
        return Ok(true);
    }
    let writer = operator.writer()?;
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = 0usize;
    loop {
        let chunk = scan.chunk(selection, CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        for record in &chunk {
            let Some(partition) = target(record) else {
                continue;
            };
            pace.tick().await;
            let headers = redrive_headers(&record.headers, &redrive_id);
            writer
                .send(
                    source,
                    partition,
                    record.key.as_deref(),
                    record.payload.as_deref(),
                    &headers,
                )
                .await
                .with_context(|| {
                    format!(
                        "redrive {redrive_id} stopped after {written} of {planned} records (the rest were not written; running it again is safe)"
                    )
                })?;
            written += 1;
        }
    }
    writeln!(
        out,
        "wrote {written} records to {source}; {topic} is unchanged"
    )?;
    let mut details = BTreeMap::from([
        ("redrive_id".to_owned(), redrive_id.clone()),
        ("records".to_owned(), written.to_string()),
        ("source_topic".to_owned(), source.to_owned()),
    ]);
    if let Some(code) = &selection.code {
        details.insert("code".to_owned(), code.clone());
    }
    if let Some(since) = selection.since_ms {
        details.insert("since".to_owned(), time_text(since));
    }
    operator
        .audit("dlq.redrive", ("topic", topic), "applied", details)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> Header {
        (name.to_owned(), Some(value.as_bytes().to_vec()))
    }

    #[test]
    fn a_redriven_record_keeps_its_original_headers_and_counts_redrives() {
        let dead = vec![
            h("traceparent", "00-aa-bb-01"),
            h("custom", "x"),
            h(header::VERSION, "1"),
            h(header::ERROR_CODE, "unknown_metric"),
            h(header::SOURCE_TOPIC, "bronze.data.cleaned"),
            h("traceparent", "00-cc-dd-01"),
        ];
        let first = redrive_headers(&dead, "r1");
        assert_eq!(
            first,
            vec![
                h("traceparent", "00-aa-bb-01"),
                h("custom", "x"),
                h(REDRIVE_ID, "r1"),
                h(REDRIVE_COUNT, "1"),
            ]
        );
        // It failed again: the stage kept those headers and added its own.
        let mut again = first;
        again.extend([
            h(header::VERSION, "1"),
            h(header::ERROR_CODE, "unknown_metric"),
        ]);
        let second = redrive_headers(&again, "r2");
        assert_eq!(&second[2..], &[h(REDRIVE_ID, "r2"), h(REDRIVE_COUNT, "2")]);
        assert_eq!(second.len(), 4);
    }

    #[test]
    fn selection_by_code_and_failure_time() {
        let record = AdminRecord {
            partition: 0,
            offset: 0,
            timestamp_ms: Some(0),
            key: None,
            payload: None,
            headers: vec![
                h(header::ERROR_CODE, "late_event"),
                h(header::LAST_FAILURE, "2026-12-01T08:00:00.000Z"),
            ],
        };
        let at = 1_796_112_000_000;
        assert!(Selection::default().matches(&record));
        let code = |code: &str| Selection {
            code: Some(code.to_owned()),
            since_ms: None,
        };
        assert!(code("late_event").matches(&record));
        assert!(!code("missing_field").matches(&record));
        let since = |since_ms| Selection {
            code: None,
            since_ms: Some(since_ms),
        };
        assert!(since(at).matches(&record));
        assert!(!since(at + 1).matches(&record));
    }
}
