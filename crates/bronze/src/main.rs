//! `bronze`: the bronze-processor binary. `--config FILE` plus `MEDALLION__` overrides.

fn main() -> anyhow::Result<()> {
    medallion_stage::main::<medallion_bronze::BronzeStage>()
}
