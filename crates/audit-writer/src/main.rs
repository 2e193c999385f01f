//! `audit-writer`: the audit-writer binary. `--config FILE` plus `MEDALLION__` overrides.

fn main() -> anyhow::Result<()> {
    medallion_stage::main::<medallion_audit_writer::AuditWriterStage>()
}
