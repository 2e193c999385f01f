//! `notification-sender`: the notification-sender binary. `--config FILE` plus `MEDALLION__`
//! overrides.

fn main() -> anyhow::Result<()> {
    medallion_stage::main::<medallion_notification_sender::NotificationSenderStage>()
}
