//! The README's first command, run as an operator would (shortened with --duration): it must
//! start the embedded broker and every stage, move records through every stage, fire alerts,
//! store the audit trail (the demo's rule change, the deliveries), notify the demo's webhook,
//! and stop cleanly.

use std::process::Command;

fn column(line: &str, index: usize) -> u64 {
    line.split_whitespace()
        .nth(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_demo_runs_every_stage_and_fires_alerts() {
    let output = Command::new(env!("CARGO_BIN_EXE_medallion"))
        .args(["demo", "--duration", "25s", "--rate", "200", "--orgs", "5"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("demo stopped after"), "{stdout}");
    // The last summary block: every stage received records, gold and the rule evaluator wrote.
    let last_block = stdout.rsplit("medallion demo:").next().expect("a summary");
    for stage in ["bronze", "silver", "gold", "rule-evaluator"] {
        let line = last_block
            .lines()
            .find(|line| line.starts_with(stage))
            .unwrap_or_else(|| panic!("no {stage} row in\n{last_block}"));
        assert!(column(line, 3) > 0, "{stage} received nothing: {line}");
    }
    let gold = last_block
        .lines()
        .find(|line| line.starts_with("gold"))
        .expect("gold row");
    assert!(column(gold, 4) > 0, "gold emitted no window: {gold}");
    let bronze = last_block
        .lines()
        .find(|line| line.starts_with("bronze"))
        .expect("bronze row");
    assert!(
        column(bronze, 5) > 0,
        "malformed records reach the DLQ: {bronze}"
    );
    assert!(column(bronze, 6) > 0, "duplicates are dropped: {bronze}");
    let fired = last_block
        .lines()
        .find_map(|line| line.strip_prefix("alerts fired: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(fired > 0, "no alert fired:\n{last_block}");
    let writer = last_block
        .lines()
        .find(|line| line.starts_with("audit-writer"))
        .unwrap_or_else(|| panic!("no audit-writer row in\n{last_block}"));
    assert!(
        column(writer, 3) > 0,
        "the audit writer received nothing: {writer}"
    );
    let stored = last_block
        .lines()
        .find_map(|line| line.strip_prefix("audit store: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(stored > 0, "no audit record stored:\n{last_block}");
    assert!(
        last_block.contains("rule.upsert 1"),
        "the demo's rule change is in the audit trail:\n{last_block}"
    );
    let notified = last_block
        .lines()
        .find_map(|line| line.strip_prefix("notifications received by the demo webhook: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        notified > 0,
        "no notification reached the demo webhook:\n{last_block}"
    );
    assert!(
        last_block.contains("notification.delivered "),
        "deliveries are in the audit trail:\n{last_block}"
    );
}
