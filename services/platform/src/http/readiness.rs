//! The standard `/ready` of a bounded-context service: its database answers and its schema is
//! fully migrated (required), and its broker answers (required or not, per service).

use sqlx::{PgPool, migrate::Migrator};

use super::{DependencyStatus, Readiness};
use crate::{db, messaging::LazyBroker};

pub struct ContextReadiness {
    pub pool: PgPool,
    pub schema: &'static str,
    pub migrator: &'static Migrator,
    pub broker: LazyBroker,
    /// The payments API, say, keeps accepting payments without its broker (the outbox holds
    /// the events), so it reports the broker without depending on it; a worker cannot.
    pub broker_required: bool,
    /// A topic the service uses, looked up to prove the broker answers.
    pub probe_topic: &'static str,
}

#[async_trait::async_trait]
impl Readiness for ContextReadiness {
    async fn check(&self) -> Vec<DependencyStatus> {
        let database = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map(|_| "answers".to_owned());
        let migrations = db::migrations_applied(&self.pool, self.schema, self.migrator)
            .await
            .map_err(|e| e.to_string())
            .and_then(|applied| {
                if applied {
                    Ok("all applied".to_owned())
                } else {
                    Err("pending migrations".to_owned())
                }
            });
        let broker = match self.broker.get() {
            Some(broker) => broker
                .check(self.probe_topic)
                .await
                .map_err(|e| e.to_string()),
            None => Err("not connected yet".to_owned()),
        };
        vec![
            DependencyStatus::from_result("database", true, database),
            DependencyStatus::from_result("migrations", true, migrations),
            DependencyStatus::from_result("broker", self.broker_required, broker),
        ]
    }
}
