//! `medallion replay --from-stage STAGE --since TIME`: recompute everything downstream of a
//! stage from a point in time (docs/replay.md), and `--to earliest|latest|OFFSET` to move one
//! stage's group only.
//!
//! With `--since`, the command:
//! 1. refuses while any affected group (the stage's and every one after it in
//!    bronze -> silver -> gold -> rule-evaluator -> notification-sender) has members;
//! 2. aligns TIME down to a gold window start (gold's `stage.window_ms`);
//! 3. resets the stage's group to the first offset at or after that time on each partition of
//!    its input (by record timestamp), refusing when records from then are no longer retained;
//! 4. moves every downstream group to the end of its input, so that what the replayed stage
//!    writes again is what it reads next. A group with unprocessed records is refused (moving it
//!    would skip them), except gold's records that belong to windows the replay recomputes: gold
//!    holds the records of its open windows uncommitted by design, and those windows start at or
//!    after the boundary, so the replay rebuilds them;
//! 5. publishes the boundary for gold on `config.changes` (kind `replay`), so gold emits only
//!    windows starting at or after it;
//! 6. writes an audit record, and prints per group and partition the offsets before and after.
//!
//! Every check runs before anything changes; a refusal or `--dry-run` changes nothing. The
//! stages' groups and topics come from their configuration files (`--config-dir DIR` holding
//! `<stage>.toml`, as the ConfigMaps do), over the compiled-in defaults.
//!
//! Limits: offsets are found by record timestamp, which the stages set when they write (at or
//! after the event time), so the reset position never misses a record of a window at or after
//! the boundary, but a connector clock ahead of the broker's can put an event's time after its
//! record's. A group with no committed offset after the replayed stage is reported and left
//! alone (it is not deployed).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use medallion_contracts::types::{
    ConfigChange, EventSource, ProcessedData, ReplayBoundary, ReplayPartition,
};
use medallion_contracts::{Decoder, Encoder, Envelope};

use crate::operator::{Operator, PLATFORM_ORG};

/// The stages in pipeline order; a replay affects a stage and those after it.
pub const CHAIN: &[&str] = &[
    "bronze",
    "silver",
    "gold",
    "rule-evaluator",
    "notification-sender",
];

/// The stage whose windows a replay's time is aligned to, and that is told the boundary.
pub const WINDOWING: &str = "gold";

/// Where `--to` moves one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The oldest retained record.
    Earliest,
    /// The end (skip everything not yet read).
    Latest,
    /// This offset on every partition.
    Offset(i64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Earliest => f.write_str("earliest"),
            Target::Latest => f.write_str("latest"),
            Target::Offset(offset) => write!(f, "offset {offset}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "earliest" => Ok(Target::Earliest),
            "latest" => Ok(Target::Latest),
            other => other
                .parse::<i64>()
                .ok()
                .filter(|offset| *offset >= 0)
                .map(Target::Offset)
                .ok_or_else(|| format!("`{other}` is not earliest, latest or an offset")),
        }
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The stage to replay from.
    pub from_stage: String,
    /// `--since`, epoch ms (exclusive with `to`).
    pub since_ms: Option<i64>,
    /// `--to`.
    pub to: Option<Target>,
    /// The stages' configuration files.
    pub config_dir: Option<PathBuf>,
    /// Change nothing.
    pub dry_run: bool,
}

/// A stage's group and input as its configuration names them.
#[derive(Debug, Clone)]
struct StageGroup {
    stage: &'static str,
    group: String,
    topic: String,
}

fn stage_file(dir: Option<&Path>, stage: &str) -> Option<PathBuf> {
    dir.map(|dir| dir.join(format!("{stage}.toml")))
        .filter(|path| path.exists())
}

fn stage_group(stage: &'static str, dir: Option<&Path>) -> anyhow::Result<StageGroup> {
    let config = crate::stages::configuration(stage, stage_file(dir, stage).as_deref())?;
    let text = |path: &[&str]| {
        path.iter()
            .try_fold(&config, |value, key| value.get(key))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("{stage}'s configuration has no {}", path.join(".")))
    };
    Ok(StageGroup {
        stage,
        group: text(&["consumer", "group_id"])?,
        topic: text(&["consumer", "input_topic"])?,
    })
}

/// Gold's `stage.KEY` from its configuration in `dir` (or its defaults).
fn gold_setting(dir: Option<&Path>, key: &str) -> anyhow::Result<serde_json::Value> {
    let config = crate::stages::configuration(WINDOWING, stage_file(dir, WINDOWING).as_deref())?;
    config
        .get("stage")
        .and_then(|stage| stage.get(key))
        .cloned()
        .with_context(|| format!("gold's configuration has no stage.{key}"))
}

fn window_ms(dir: Option<&Path>) -> anyhow::Result<i64> {
    gold_setting(dir, "window_ms")?
        .as_i64()
        .filter(|window| *window > 0)
        .context("gold's stage.window_ms is not a positive number")
}

fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// One group's move.
#[derive(Debug)]
struct Move {
    group: StageGroup,
    /// What it does, for the printout.
    how: String,
    before: BTreeMap<i32, Option<i64>>,
    after: BTreeMap<i32, i64>,
}

impl Move {
    fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "  {} on {}: {}",
            self.group.group, self.group.topic, self.how
        )?;
        for (partition, after) in &self.after {
            let before = self.before.get(partition).copied().flatten();
            let change = match before {
                Some(before) if before > *after => {
                    format!("{} records to reprocess", before - after)
                }
                Some(before) if before < *after => format!("skips {}", after - before),
                Some(_) => "unchanged".to_owned(),
                None => "nothing committed before".to_owned(),
            };
            let before = before.map_or_else(|| "-".to_owned(), |offset| offset.to_string());
            writeln!(
                out,
                "    partition {partition}: {before} -> {after} ({change})"
            )?;
        }
        Ok(())
    }
}

fn has_commits(committed: &BTreeMap<i32, Option<i64>>) -> bool {
    committed.values().any(Option::is_some)
}

/// Runs the replay (or prints it with `dry_run`). Returns `Ok(true)` when done.
pub async fn run(
    operator: &Operator,
    options: &ReplayOptions,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    let dir = options.config_dir.as_deref();
    let index = CHAIN
        .iter()
        .position(|stage| *stage == options.from_stage)
        .with_context(|| {
            format!(
                "unknown stage `{}`; replay from one of {}",
                options.from_stage,
                CHAIN.join(", ")
            )
        })?;
    let affected: Vec<StageGroup> = CHAIN[index..]
        .iter()
        .map(|stage| stage_group(stage, dir))
        .collect::<anyhow::Result<_>>()?;
    let replayed = &affected[0];
    let groups: &[StageGroup] = if options.to.is_some() {
        &affected[..1]
    } else {
        &affected
    };

    // 1. Nobody may be consuming (and every topic must exist).
    let mut busy = Vec::new();
    let mut committed_by_group = BTreeMap::new();
    for group in groups {
        let partitions = operator.admin.partitions(&group.topic)?;
        let committed = operator
            .admin
            .committed(&group.group, &group.topic, partitions)?;
        let members = operator.admin.members(&group.group).with_context(|| {
            format!(
                "cannot tell whether {} has members, so nothing was changed",
                group.group
            )
        })?;
        if !members.is_empty() {
            busy.push(format!(
                "{} has {} active members ({}): scale deployment/medallion-{} to zero first",
                group.group,
                members.len(),
                members.join(", "),
                group.stage
            ));
        }
        committed_by_group.insert(group.group.clone(), committed);
    }
    anyhow::ensure!(
        busy.is_empty(),
        "refusing to replay while groups are consuming: {}",
        busy.join("; ")
    );

    let partitions = operator.admin.partitions(&replayed.topic)?;
    let committed = committed_by_group
        .remove(&replayed.group)
        .unwrap_or_default();
    anyhow::ensure!(
        has_commits(&committed),
        "group `{}` has no committed offsets on `{}`: unknown group (check the stage's consumer.group_id and --config-dir)",
        replayed.group,
        replayed.topic
    );

    if let Some(target) = options.to {
        let mut after = BTreeMap::new();
        for partition in 0..partitions {
            let (low, high) = operator.admin.watermarks(&replayed.topic, partition)?;
            let offset = match target {
                Target::Earliest => low,
                Target::Latest => high,
                Target::Offset(offset) => {
                    anyhow::ensure!(
                        (low..=high).contains(&offset),
                        "offset {offset} is outside partition {partition} of `{}` (it holds {low} to {high})",
                        replayed.topic
                    );
                    offset
                }
            };
            after.insert(partition, offset);
        }
        let moved = Move {
            group: replayed.clone(),
            how: format!("moved to {target}"),
            before: committed,
            after,
        };
        writeln!(
            out,
            "replay of {} alone on {}:",
            replayed.group,
            operator.brokers()
        )?;
        moved.print(out)?;
        if options.dry_run {
            writeln!(out, "dry run: nothing changed")?;
            return Ok(true);
        }
        operator
            .admin
            .commit(&moved.group.group, &moved.group.topic, &moved.after)?;
        let details = BTreeMap::from([
            ("group".to_owned(), moved.group.group.clone()),
            ("to".to_owned(), target.to_string()),
        ]);
        operator
            .audit(
                "replay.reset",
                ("group", &moved.group.group),
                "applied",
                details,
            )
            .await?;
        writeln!(
            out,
            "done; scale deployment/medallion-{} back up",
            replayed.stage
        )?;
        return Ok(true);
    }

    let since = options
        .since_ms
        .context("pass --since TIME (or --to for one group)")?;
    let window = window_ms(dir)?;
    let boundary = since.div_euclid(window) * window;

    // 3. The replayed group: the first record at or after the boundary, still retained.
    let mut refusals = Vec::new();
    let found = operator
        .admin
        .offsets_for_time(&replayed.topic, partitions, boundary)?;
    let mut reset = BTreeMap::new();
    for partition in 0..partitions {
        let (low, high) = operator.admin.watermarks(&replayed.topic, partition)?;
        let offset = found.get(&partition).copied().flatten().unwrap_or(high);
        if offset == low && low > 0 {
            let mut oldest = None;
            operator.admin.read(
                &replayed.topic,
                &BTreeMap::from([(partition, low)]),
                |record| {
                    oldest = record.timestamp_ms;
                    false
                },
            )?;
            if oldest.is_some_and(|oldest| oldest > boundary) {
                refusals.push(format!(
                    "`{}` partition {partition} no longer holds records from {} (the oldest it keeps is from {}); replay from a later time",
                    replayed.topic,
                    time_text(boundary),
                    time_text(oldest.unwrap_or_default())
                ));
            }
        }
        reset.insert(partition, offset);
    }
    let mut moves = vec![Move {
        group: replayed.clone(),
        how: "reset to the first record at or after the boundary".to_owned(),
        before: committed,
        after: reset,
    }];

    // 4. Downstream groups: to the end of their input, if that skips nothing the replay does
    // not write again.
    let mut absent = Vec::new();
    for group in &affected[1..] {
        let partitions = operator.admin.partitions(&group.topic)?;
        let committed = committed_by_group.remove(&group.group).unwrap_or_default();
        if !has_commits(&committed) {
            absent.push(group.group.clone());
            continue;
        }
        let mut ends = BTreeMap::new();
        for partition in 0..partitions {
            let (low, high) = operator.admin.watermarks(&group.topic, partition)?;
            let from = committed
                .get(&partition)
                .copied()
                .flatten()
                .unwrap_or(low)
                .max(low);
            if from < high {
                if group.stage == WINDOWING {
                    let before =
                        records_before(operator, &group.topic, partition, from, boundary, window)
                            .await?;
                    if before > 0 {
                        refusals.push(format!(
                            "{} has {before} uncommitted records on `{}` partition {partition} of windows before {}; they would be lost: replay from an earlier time, or let gold close those windows first",
                            group.group, group.topic, time_text(boundary)
                        ));
                    }
                } else {
                    refusals.push(format!(
                        "{} has {} unprocessed records on `{}` partition {partition}; moving it would skip them: let it catch up (scale it up, wait for lag 0, scale it down) first",
                        group.group,
                        high - from,
                        group.topic
                    ));
                }
            }
            ends.insert(partition, high);
        }
        let how = if group.stage == WINDOWING {
            format!(
                "moved to the end; it emits only windows starting at or after {}",
                time_text(boundary)
            )
        } else {
            "moved to the end".to_owned()
        };
        moves.push(Move {
            group: group.clone(),
            how,
            before: committed,
            after: ends,
        });
    }
    anyhow::ensure!(
        refusals.is_empty(),
        "refusing to replay: {}",
        refusals.join("; ")
    );

    let replay_id = uuid::Uuid::new_v4().to_string();
    writeln!(
        out,
        "replay {replay_id} from {} since {}, aligned down to the gold window start {} ({} ms windows), on {}:",
        replayed.stage,
        time_text(since),
        time_text(boundary),
        window,
        operator.brokers()
    )?;
    for moved in &moves {
        moved.print(out)?;
    }
    for group in &absent {
        writeln!(
            out,
            "  {group}: no committed offsets (not deployed); left alone"
        )?;
    }
    if options.dry_run {
        writeln!(out, "dry run: nothing changed")?;
        return Ok(true);
    }

    // 5. Move the groups, then tell gold.
    for moved in &moves {
        operator
            .admin
            .commit(&moved.group.group, &moved.group.topic, &moved.after)
            .with_context(|| format!("replay {replay_id}: moving {} failed (groups before it were moved; run the same replay again)", moved.group.group))?;
    }
    if let Some(gold) = moves.iter().find(|moved| moved.group.stage == WINDOWING) {
        publish_boundary(operator, dir, &replay_id, gold, boundary)
            .await
            .with_context(|| format!("replay {replay_id}: the groups were moved, but gold's boundary was not published; run the same replay again before starting gold"))?;
    }
    let mut details = BTreeMap::from([
        ("replay_id".to_owned(), replay_id.clone()),
        ("from_stage".to_owned(), replayed.stage.to_owned()),
        ("boundary".to_owned(), time_text(boundary)),
    ]);
    for moved in &moves {
        let positions: Vec<String> = moved
            .after
            .iter()
            .map(|(partition, offset)| format!("{partition}:{offset}"))
            .collect();
        details.insert(format!("group.{}", moved.group.group), positions.join(","));
    }
    operator
        .audit(
            "replay.start",
            ("stage", replayed.stage),
            "applied",
            details,
        )
        .await?;
    let stages: Vec<String> = moves
        .iter()
        .map(|moved| format!("deployment/medallion-{}", moved.group.stage))
        .collect();
    writeln!(
        out,
        "replay {replay_id} is set: scale {} back up (docs/replay.md)",
        stages.join(" ")
    )?;
    Ok(true)
}

/// Records of `topic` `partition` from `from` to its end whose window (of `window` ms) starts
/// before `boundary`.
async fn records_before(
    operator: &Operator,
    topic: &str,
    partition: i32,
    from: i64,
    boundary: i64,
    window: i64,
) -> anyhow::Result<usize> {
    let mut payloads = Vec::new();
    operator
        .admin
        .read(topic, &BTreeMap::from([(partition, from)]), |record| {
            payloads.push(record.payload.unwrap_or_default());
            true
        })?;
    let decoder = Decoder::<ProcessedData>::new(operator.registry.clone());
    let mut before = 0;
    for payload in payloads {
        match decoder.decode(&payload).await {
            Ok(event) if event.payload.observed_at.div_euclid(window) * window >= boundary => {}
            // A record gold cannot read is dead-lettered when gold reads it; not decoding here
            // counts it as one the replay would lose, to be safe.
            _ => before += 1,
        }
    }
    Ok(before)
}

async fn publish_boundary(
    operator: &Operator,
    dir: Option<&Path>,
    replay_id: &str,
    gold: &Move,
    boundary: i64,
) -> anyhow::Result<()> {
    let encoder = Encoder::<ConfigChange>::register(&operator.registry).await?;
    let event = Envelope::new(
        uuid::Uuid::new_v4(),
        medallion_stage::now_ms(),
        EventSource {
            service: "medallion".to_owned(),
            instance: operator.actor.clone(),
        },
        PLATFORM_ORG,
        ConfigChange {
            kind: "replay".to_owned(),
            action: "start".to_owned(),
            rule_id: replay_id.to_owned(),
            version: 1,
            rule: None,
            changed_by: Some(operator.actor.clone()),
            replay: Some(ReplayBoundary {
                group: gold.group.group.clone(),
                topic: gold.group.topic.clone(),
                boundary_ms: boundary,
                partitions: gold
                    .after
                    .iter()
                    .map(|(partition, offset)| ReplayPartition {
                        partition: *partition,
                        from_offset: *offset,
                    })
                    .collect(),
            }),
        },
    );
    let payload = encoder.encode(&event)?;
    operator
        .send_for_platform(&changes_topic(dir)?, &payload)
        .await
}

fn changes_topic(dir: Option<&Path>) -> anyhow::Result<String> {
    gold_setting(dir, "changes_topic")?
        .as_str()
        .map(str::to_owned)
        .context("gold's stage.changes_topic is not a topic name")
}
