//! Every configuration key the README documents is one the stages accept: a documented key the
//! loader refuses fails this test.

use std::collections::BTreeSet;

use medallion::stages::{keys, STAGES};

/// The backticked keys of a table cell, with `.password` after `schema_registry.username`
/// read as `schema_registry.password`, and `kafka.librdkafka."prop"` as `kafka.librdkafka`.
fn cell_keys(cell: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut table = String::new();
    for (index, part) in cell.split('`').enumerate() {
        if index % 2 == 0 {
            continue;
        }
        let key = part.split(".\"").next().unwrap_or(part);
        let key = if let Some(relative) = key.strip_prefix('.') {
            format!("{table}.{relative}")
        } else {
            key.to_owned()
        };
        table = key
            .rsplit_once('.')
            .map(|(t, _)| t.to_owned())
            .unwrap_or_default();
        found.push(key);
    }
    found
}

#[test]
fn every_documented_key_is_accepted_by_the_stages_it_names() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a Configuration section");
    let all: Vec<BTreeSet<String>> = STAGES
        .iter()
        .map(|stage| keys(stage).expect("stage keys"))
        .collect();
    let mut checked = 0;
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | key | ... | rows only; skip the header and the separator.
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        for key in cell_keys(cells[1]) {
            if key.starts_with("stage.") {
                let named: Vec<&str> = cells[2].split(',').map(str::trim).collect();
                assert!(!named.is_empty(), "{key}: the row names no stage");
                for stage in named {
                    let index = STAGES
                        .iter()
                        .position(|known| *known == stage)
                        .unwrap_or_else(|| panic!("{key}: unknown stage `{stage}` in the README"));
                    assert!(
                        all[index].contains(&key),
                        "README documents `{key}` for {stage}, which does not accept it"
                    );
                }
            } else {
                for (stage, stage_keys) in STAGES.iter().zip(&all) {
                    assert!(
                        stage_keys.contains(&key),
                        "README documents `{key}`, which {stage} does not accept"
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked > 40,
        "only {checked} keys found in the README's tables"
    );
}

#[test]
fn relative_and_property_keys_are_read_as_full_keys() {
    assert_eq!(
        cell_keys("`schema_registry.username`, `.password`"),
        ["schema_registry.username", "schema_registry.password"]
    );
    assert_eq!(
        cell_keys("`kafka.librdkafka.\"prop\"`"),
        ["kafka.librdkafka"]
    );
}
