//! The consumer inbox: a consumer records each event id in the same transaction as the event's
//! effect, so a redelivered event finds its row and is skipped; never applied twice.
//!
//! [`TransactionalHandler`] is the shape of such a consumer: it applies an event inside a
//! transaction the platform opens and commits. [`Transactional`] turns it into an
//! [`EventHandler`] whose batches share one transaction: a busy consumer pays one commit for
//! many events, and a batch is still all or nothing (inbox rows and effects together).

use sqlx::{PgConnection, PgPool};

use crate::messaging::{Envelope, EventHandler, HandlerError};

/// Records `envelope` as processed by `consumer`. Returns `false` when it already was: the
/// caller must then skip the effect (and still commit/ack).
pub async fn first_delivery(
    tx: &mut PgConnection,
    consumer: &str,
    envelope: &Envelope,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO inbox (event_id, consumer, event_type) VALUES ($1, $2, $3) \
         ON CONFLICT (event_id, consumer) DO NOTHING",
    )
    .bind(envelope.event_id)
    .bind(consumer)
    .bind(&envelope.event_type)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// A consumer whose effect is a change in its own database.
#[async_trait::async_trait]
pub trait TransactionalHandler: Send + Sync + 'static {
    /// What applying one event did, handed to [`Self::committed`] after the commit.
    type Applied: Send + Sync;

    fn pool(&self) -> &PgPool;

    /// Applies `envelope` inside `tx`: its inbox check and its effect. Other events of the
    /// same batch may come before and after it in the same transaction.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<Self::Applied, HandlerError>;

    /// Applies a batch inside `tx`, in order. The default applies each event in turn; a handler
    /// may first do set-wise work (take its locks in a fixed order, write many rows at once).
    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> Result<Vec<Self::Applied>, HandlerError> {
        apply_each(self, tx, envelopes).await
    }

    /// Runs once the transaction holding `envelope`'s effect committed (metrics, progress kept
    /// in memory): never for an effect that was rolled back.
    fn committed(&self, _envelope: &Envelope, _applied: &Self::Applied) {}

    /// Most events one transaction applies.
    fn max_batch(&self) -> usize {
        64
    }

    /// Applies one event in a transaction of its own and says what it did (tests, tools).
    async fn apply_alone(&self, envelope: &Envelope) -> Result<Self::Applied, HandlerError> {
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        let mut tx = self.pool().begin().await.map_err(transient)?;
        let applied = self.apply(&mut tx, envelope).await?;
        tx.commit().await.map_err(transient)?;
        self.committed(envelope, &applied);
        Ok(applied)
    }
}

/// Applies `envelopes` one after the other inside `tx` (what [`TransactionalHandler::apply_batch`]
/// does by default, and what an override does after its set-wise work).
pub async fn apply_each<H: TransactionalHandler + ?Sized>(
    handler: &H,
    tx: &mut PgConnection,
    envelopes: &[Envelope],
) -> Result<Vec<H::Applied>, HandlerError> {
    let mut applied = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        applied.push(handler.apply(&mut *tx, envelope).await?);
    }
    Ok(applied)
}

/// A [`TransactionalHandler`] as an [`EventHandler`]: one transaction per event, or per batch.
pub struct Transactional<H>(pub H);

impl<H: TransactionalHandler> Transactional<H> {
    /// Applies `envelopes` in order in one transaction; nothing of them stays if one fails.
    pub async fn apply_all(&self, envelopes: &[Envelope]) -> Result<(), HandlerError> {
        let transient = |e: sqlx::Error| HandlerError::Transient(e.into());
        let mut tx = self.0.pool().begin().await.map_err(transient)?;
        let applied = self.0.apply_batch(&mut tx, envelopes).await?;
        tx.commit().await.map_err(transient)?;
        for (envelope, applied) in envelopes.iter().zip(&applied) {
            self.0.committed(envelope, applied);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl<H: TransactionalHandler> EventHandler for Transactional<H> {
    async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        self.apply_all(std::slice::from_ref(&envelope)).await
    }

    /// All or nothing: if the transaction fails, every event of it is handled alone.
    async fn handle_batch(&self, envelopes: &[Envelope]) -> Vec<Result<(), HandlerError>> {
        match self.apply_all(envelopes).await {
            Ok(()) => envelopes.iter().map(|_| Ok(())).collect(),
            Err(error) => {
                let reason = error.to_string();
                envelopes
                    .iter()
                    .map(|_| {
                        Err(HandlerError::Transient(anyhow::anyhow!(
                            "its batch failed: {reason}"
                        )))
                    })
                    .collect()
            }
        }
    }

    fn max_batch(&self) -> usize {
        self.0.max_batch()
    }
}
