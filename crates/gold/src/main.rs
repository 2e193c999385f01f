//! `gold`: the gold-processor binary. `--config FILE` plus `MEDALLION__` overrides.

fn main() -> anyhow::Result<()> {
    medallion_stage::main::<medallion_gold::GoldStage>()
}
