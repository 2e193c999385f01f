//! Following `config.changes`: the loop the stages that read it share (the rule evaluator for
//! rules, gold for replay boundaries). Every change from the beginning of the topic is decoded
//! and handed over in order; `caught_up` fires once everything that was on the topic when the
//! reader opened has been handed over. A change that does not decode is logged and skipped
//! (changes are not dead-lettered: they are read again at every start).

use medallion_contracts::types::ConfigChange;
use medallion_contracts::{Decoder, Envelope, Registry};
use medallion_core::side::{ReaderEvent, TopicReader};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What the handler says after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read on.
    Continue,
    /// Stop (the stage is shutting down).
    Stop,
}

/// What a stage does with each change.
pub trait ChangeHandler: Send {
    /// Handles one change.
    fn handle(
        &mut self,
        change: Envelope<ConfigChange>,
    ) -> impl std::future::Future<Output = Next> + Send;
}

/// Reads `reader` until `shutdown`, giving `handler` each change in order.
pub async fn follow(
    mut reader: TopicReader,
    registry: Registry,
    shutdown: CancellationToken,
    caught_up: oneshot::Sender<()>,
    mut handler: impl ChangeHandler,
) -> anyhow::Result<()> {
    let decoder = Decoder::<ConfigChange>::new(registry);
    let mut caught_up = Some(caught_up);
    loop {
        let message = match reader.next(&shutdown).await {
            None => return Ok(()),
            Some(ReaderEvent::CaughtUp) => {
                if let Some(caught_up) = caught_up.take() {
                    let _ = caught_up.send(());
                }
                continue;
            }
            Some(ReaderEvent::Record(message)) => message,
            Some(_) => continue,
        };
        let change = match decoder
            .decode(message.payload.as_deref().unwrap_or_default())
            .await
        {
            Ok(change) => change,
            Err(error) => {
                tracing::warn!(%error, offset = message.offset, "skipping an undecodable config change");
                continue;
            }
        };
        if handler.handle(change).await == Next::Stop {
            return Ok(());
        }
    }
}
