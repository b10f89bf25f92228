//! The `Idempotency-Key` claim against a real PostgreSQL: a request that runs longer than the
//! claim's lease keeps it (renewed while it runs), and a request that dies stops blocking its
//! retries once the lease runs out, seconds later instead of a minute.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use platform::{
    db,
    http::{JsonReply, idempotent},
    idempotency::{Claim, IdempotencyStore},
};
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

const SCHEMA: &str = "idempotency_test";
const LEASE: Duration = Duration::from_millis(900);

async fn migrated_pool(connect: &PgConnectOptions) -> PgPool {
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(db::with_schema(connect.clone(), SCHEMA))
        .await
        .unwrap();
    db::migrate(&pool, SCHEMA, &Migrator::with_migrations(Vec::new()))
        .await
        .unwrap();
    pool
}

fn keyed(key: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
    headers
}

const BODY: &[u8] = br#"{"monto": 10}"#;

fn fingerprint() -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(BODY)
        .unwrap()
        .to_string();
    IdempotencyStore::fingerprint("POST", "/pagos", canonical.as_bytes())
}

#[sqlx::test(migrations = false)]
async fn a_request_running_past_its_lease_keeps_its_claim(_o: PgPoolOptions, c: PgConnectOptions) {
    let pool = migrated_pool(&c).await;
    let store = IdempotencyStore::with_claim_lease(pool.clone(), "test", LEASE);
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let slow = {
        let store = store.clone();
        tokio::spawn(async move {
            idempotent(&store, &keyed("slow"), "POST", "/pagos", BODY, || async {
                started_tx.send(()).unwrap();
                // Four leases long: without renewal a retry would take the key over.
                tokio::time::sleep(LEASE * 4).await;
                JsonReply::new(StatusCode::CREATED, serde_json::json!({"id": 1}))
            })
            .await
        })
    };
    started.await.unwrap();
    let retries = IdempotencyStore::with_claim_lease(pool.clone(), "test", LEASE);
    for _ in 0..6 {
        tokio::time::sleep(LEASE / 2).await;
        assert_eq!(
            retries.claim("slow", &fingerprint()).await.unwrap(),
            Claim::InFlight,
            "a retry while the first request still runs is told to wait"
        );
    }
    let first = slow.await.unwrap().unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let Claim::Replay { status, body, .. } = retries.claim("slow", &fingerprint()).await.unwrap()
    else {
        panic!("the finished request's answer is replayed");
    };
    assert_eq!((status, body), (201, serde_json::json!({"id": 1})));
}

#[sqlx::test(migrations = false)]
async fn a_request_that_died_frees_its_key_once_the_lease_runs_out(
    _o: PgPoolOptions,
    c: PgConnectOptions,
) {
    let pool = migrated_pool(&c).await;
    let store = IdempotencyStore::with_claim_lease(pool.clone(), "test", LEASE);
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let doomed = {
        let store = store.clone();
        tokio::spawn(async move {
            idempotent(&store, &keyed("doomed"), "POST", "/pagos", BODY, || async {
                started_tx.send(()).unwrap();
                std::future::pending::<Result<JsonReply, platform::http::Problem>>().await
            })
            .await
        })
    };
    started.await.unwrap();
    // Let it renew a few times, then kill it the way a dying process does: mid-request,
    // with no chance to release the key.
    tokio::time::sleep(LEASE * 2).await;
    doomed.abort();
    let _ = doomed.await;
    let died_at = std::time::Instant::now();

    assert_eq!(
        store.claim("doomed", &fingerprint()).await.unwrap(),
        Claim::InFlight,
        "right after the death the claim still holds"
    );
    let freed = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match store.claim("doomed", &fingerprint()).await.unwrap() {
            Claim::InFlight => assert!(
                died_at.elapsed() < LEASE * 5,
                "the dead claim is still held {:?} after its last renewal",
                died_at.elapsed()
            ),
            Claim::Acquired => break died_at.elapsed(),
            other => panic!("unexpected {other:?}"),
        }
    };
    // The claim can only lapse after the last renewal's lease (renewals came every third).
    assert!(freed >= LEASE / 3, "freed after {freed:?}");
    // A retry with another body is still refused: the key stays bound to its request.
    assert_eq!(
        store.claim("doomed", "another body").await.unwrap(),
        Claim::Mismatch
    );
}
