//! The consumer inbox: a consumer records each event id in the same transaction as the event's
//! effect, so a redelivered event finds its row and is skipped; never applied twice.

use sqlx::PgConnection;

use crate::messaging::Envelope;

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
