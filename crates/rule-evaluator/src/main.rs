//! `rule-evaluator`: the rule-evaluator binary. `--config FILE` plus `MEDALLION__` overrides.

fn main() -> anyhow::Result<()> {
    medallion_stage::main::<medallion_rule_evaluator::RuleEvaluatorStage>()
}
