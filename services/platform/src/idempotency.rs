//! The `Idempotency-Key` store: the first request with a key does the work and its response is
//! saved; a retry with the same key and body gets that response again, a different body is
//! refused (422), and a retry while the first is still running is told so (409).
//!
//! Keys live in PostgreSQL, so every replica sees the same ones; the primary key makes two
//! simultaneous first requests race for one row, and only one wins.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The answer to "may I run this request?".
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// First time: run the request, then `complete` (or `release` on a server error).
    Acquired,
    /// Done before with the same body: answer with the saved response.
    Replay {
        status: u16,
        body: serde_json::Value,
        headers: Vec<(String, String)>,
    },
    /// The first request with this key has not finished yet.
    InFlight,
    /// The key was used with a different request.
    Mismatch,
}

type Existing = (
    String,
    Option<i16>,
    Option<serde_json::Value>,
    sqlx::types::Json<Vec<(String, String)>>,
);

/// How long a claim outlives the last sign of life of the request holding it. The request
/// renews it every third of that while it runs, however long it runs; a request that died with
/// its process stops renewing, and a retry with the same key and body may run after at most
/// this long (it used to wait for twice the request timeout: 60 s).
pub const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
    /// The key namespace: the service's (`pagos`), and within it the caller's (see
    /// [`IdempotencyStore::within`]).
    scope: std::borrow::Cow<'static, str>,
    /// How long a key is remembered (API.md: at least 24 h).
    retention: Duration,
    /// How long a claim protects an unfinished request past its last renewal; after that a
    /// crashed request's key can be claimed again by a retry with the same body.
    claim_lease: Duration,
}

impl IdempotencyStore {
    pub fn new(pool: PgPool, scope: &'static str) -> Self {
        Self::with_claim_lease(pool, scope, DEFAULT_CLAIM_LEASE)
    }

    pub fn with_claim_lease(pool: PgPool, scope: &'static str, claim_lease: Duration) -> Self {
        Self {
            pool,
            scope: std::borrow::Cow::Borrowed(scope),
            retention: Duration::from_secs(24 * 3600),
            claim_lease,
        }
    }

    /// The same store with keys of their own for `caller` (an affiliate): two partners may use
    /// the same `Idempotency-Key` without ever seeing each other's answers, as Stripe keeps
    /// keys per account.
    pub fn within(&self, caller: &str) -> Self {
        Self {
            scope: std::borrow::Cow::Owned(format!("{}/{caller}", self.scope)),
            ..self.clone()
        }
    }

    /// Fingerprint of what the client asked for: method, path and exact body bytes.
    pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(method.as_bytes());
        hasher.update(b" ");
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        hasher.update(body);
        hex::encode(hasher.finalize())
    }

    pub async fn claim(&self, key: &str, fingerprint: &str) -> Result<Claim, sqlx::Error> {
        // Twice at most: the only way the follow-up read finds no row is that the row was
        // released in between, and then the next insert wins or sees the new owner.
        for _ in 0..2 {
            let acquired: Option<bool> = sqlx::query_scalar(
                "INSERT INTO idempotency_keys (scope, key, request_hash, locked_until, expires_at) \
                 VALUES ($1, $2, $3, now() + $4::interval, now() + $5::interval) \
                 ON CONFLICT (scope, key) DO UPDATE SET \
                    request_hash = EXCLUDED.request_hash, locked_until = EXCLUDED.locked_until, \
                    expires_at = EXCLUDED.expires_at, response_status = NULL, \
                    response_body = NULL, created_at = now() \
                 WHERE idempotency_keys.expires_at < now() \
                    OR (idempotency_keys.response_status IS NULL \
                        AND idempotency_keys.locked_until < now() \
                        AND idempotency_keys.request_hash = EXCLUDED.request_hash) \
                 RETURNING true",
            )
            .bind(self.scope.as_ref())
            .bind(key)
            .bind(fingerprint)
            .bind(interval(self.claim_lease))
            .bind(interval(self.retention))
            .fetch_optional(&self.pool)
            .await?;
            if acquired.is_some() {
                return Ok(Claim::Acquired);
            }
            let existing: Option<Existing> = sqlx::query_as(
                "SELECT request_hash, response_status, response_body, response_headers \
                     FROM idempotency_keys WHERE scope = $1 AND key = $2",
            )
            .bind(self.scope.as_ref())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
            match existing {
                None => continue,
                Some((hash, ..)) if hash != fingerprint => return Ok(Claim::Mismatch),
                Some((_, Some(status), Some(body), headers)) => {
                    return Ok(Claim::Replay {
                        status: u16::try_from(status).unwrap_or(200),
                        body,
                        headers: headers.0,
                    });
                }
                Some(_) => return Ok(Claim::InFlight),
            }
        }
        Ok(Claim::InFlight)
    }

    /// Saves the response of the request that holds the claim.
    pub async fn complete(
        &self,
        key: &str,
        status: u16,
        body: &serde_json::Value,
        headers: &[(String, String)],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE idempotency_keys SET response_status = $3, response_body = $4, \
             response_headers = $5 WHERE scope = $1 AND key = $2",
        )
        .bind(self.scope.as_ref())
        .bind(key)
        .bind(i16::try_from(status).unwrap_or(500))
        .bind(body)
        .bind(sqlx::types::Json(headers))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives the key back (the request failed on our side), so the client may retry with it.
    pub async fn release(&self, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND response_status IS NULL",
        )
        .bind(self.scope.as_ref())
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps the claim on `key` alive for as long as this future is polled: it extends the
    /// lease every third of its length. Run it beside the request (`select!`); when the request
    /// ends, or its process dies, the renewals stop and the lease runs out on its own.
    pub async fn keep_claimed(&self, key: &str) -> std::convert::Infallible {
        let period = self.claim_lease / 3;
        loop {
            tokio::time::sleep(period).await;
            let renewed = sqlx::query(
                "UPDATE idempotency_keys SET locked_until = now() + $3::interval \
                 WHERE scope = $1 AND key = $2 AND response_status IS NULL",
            )
            .bind(self.scope.as_ref())
            .bind(key)
            .bind(interval(self.claim_lease))
            .execute(&self.pool)
            .await;
            if let Err(error) = renewed {
                // The next renewal may still make it within the lease; if none does, a retry
                // may run beside this request, which the payment's own reference still
                // deduplicates.
                tracing::warn!(%error, "cannot renew an idempotency claim");
            }
        }
    }
}

fn interval(duration: Duration) -> String {
    format!("{} milliseconds", duration.as_millis())
}
