//! Group commit: requests put their work on a bounded queue and wait; writers take whatever has
//! queued up (up to a batch limit) and store it in one transaction, then answer each request.
//! Under load many requests share one commit (one fsync, one NOTIFY), and each is still
//! answered only after its own work is durable. A full queue answers at once (the caller says
//! 503 + Retry-After): a client never waits without bound.

use std::{
    sync::{Arc, LazyLock},
    time::Instant,
};

use prometheus::{HistogramVec, IntGaugeVec};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::telemetry;

/// One unit of work on the queue. Its weight counts against the queue's capacity and the
/// batch limit (an event batch weighs its number of events; a payment weighs one).
pub trait Work: Send + 'static {
    fn weight(&self) -> usize {
        1
    }
}

/// Stores a batch in one transaction and answers each item, in order. The PostgreSQL
/// implementations live in the contexts' infrastructure; the queue does not care how.
#[async_trait::async_trait]
pub trait BatchStore<W: Work, A: Send + 'static>: Send + Sync + 'static {
    async fn store(&self, batch: &[W]) -> Result<Vec<A>, StoreError>;
}

/// The whole batch failed: nothing of it was stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the store failed: {message}")]
pub struct StoreError {
    message: String,
    unavailable: bool,
}

impl StoreError {
    /// The database could not be reached: any batch would have failed, whatever it held. Every
    /// request of the batch gets this error (a retry soon may succeed).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: true,
        }
    }

    /// Something in the batch was refused. One request's bad data must not fail the others
    /// that happened to share its transaction: each is stored again on its own, and only the
    /// one that fails alone gets the error.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unavailable: false,
        }
    }

    /// Classifies a database error as [`Self::unavailable`] or [`Self::refused`].
    pub fn from_database(error: &sqlx::Error) -> Self {
        if crate::db::is_unreachable(error) {
            Self::unavailable(error.to_string())
        } else {
            Self::refused(error.to_string())
        }
    }

    /// Whether the database was out of reach (503 and a retry), rather than the request's
    /// work being refused (a retry fails the same way).
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum GroupCommitError {
    #[error("the write queue is full")]
    Full,
    #[error("the service is stopping")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    /// Weight that may be queued or being stored at once; beyond that, [`GroupCommitError::Full`].
    /// At least one largest transaction's worth.
    pub capacity: usize,
    /// Writers (transactions in flight at once) per process.
    pub writers: usize,
    /// Largest weight one transaction stores.
    pub max_batch_weight: usize,
}

struct Queued<W, A> {
    work: W,
    answer: oneshot::Sender<Result<A, StoreError>>,
}

/// The sending side, cloned into every handler.
pub struct GroupCommit<W, A> {
    name: &'static str,
    tx: mpsc::Sender<Queued<W, A>>,
    /// One permit per unit of weight queued or being stored: memory is bounded in work, whatever
    /// mix of light and heavy items arrives.
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl<W, A> Clone for GroupCommit<W, A> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            tx: self.tx.clone(),
            permits: self.permits.clone(),
            capacity: self.capacity,
        }
    }
}

static BATCH_WEIGHT: LazyLock<HistogramVec> = LazyLock::new(|| {
    telemetry::register(
        HistogramVec::new(
            prometheus::HistogramOpts::new(
                "group_commit_batch_weight",
                "Work stored per group-commit transaction (events, payments), by queue",
            )
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0,
            ]),
            &["queue"],
        )
        .expect("valid metric"),
    )
});
static BATCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    telemetry::histogram_vec(
        "group_commit_batch_seconds",
        "Duration of one group-commit transaction, by queue",
        &["queue"],
    )
});
static QUEUED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    telemetry::register(
        IntGaugeVec::new(
            prometheus::Opts::new(
                "group_commit_queued",
                "Work queued or being stored by the writers, by queue",
            ),
            &["queue"],
        )
        .expect("valid metric"),
    )
});

impl<W: Work, A: Send + 'static> GroupCommit<W, A> {
    /// Starts the writers of queue `name`; they stop when `stop` is cancelled, after answering
    /// what they hold.
    pub fn start(
        name: &'static str,
        store: Arc<dyn BatchStore<W, A>>,
        config: GroupCommitConfig,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let capacity = config.capacity.max(1);
        // Every request holds at least one permit, so the channel never fills before them.
        let (tx, rx) = mpsc::channel(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let mut writers = tokio::task::JoinSet::new();
        for number in 0..config.writers.max(1) {
            let writer = Writer {
                name,
                store: store.clone(),
                rx: rx.clone(),
                max_weight: config.max_batch_weight.max(1),
            };
            writers.spawn(writer.run(stop.clone()).instrument(tracing::info_span!(
                "group_commit",
                queue = name,
                writer = number
            )));
        }
        let handle = tokio::spawn(async move { while writers.join_next().await.is_some() {} });
        (
            Self {
                name,
                tx,
                permits: Arc::new(Semaphore::new(capacity)),
                capacity,
            },
            handle,
        )
    }

    /// Queues `work` and waits until it is stored (or the store fails).
    pub async fn submit(&self, work: W) -> Result<A, GroupCommitError> {
        let weight = u32::try_from(work.weight().max(1)).unwrap_or(u32::MAX);
        // Held until the answer: the work counts against the bound while it is stored.
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(weight)
            .map_err(|_| GroupCommitError::Full)?;
        self.observe();
        let (answer, answered) = oneshot::channel();
        if let Err(error) = self.tx.try_send(Queued { work, answer }) {
            return Err(match error {
                mpsc::error::TrySendError::Full(_) => GroupCommitError::Full,
                mpsc::error::TrySendError::Closed(_) => GroupCommitError::Closed,
            });
        }
        let result = match answered.await {
            Ok(result) => Ok(result?),
            // The writers stopped with this request on the queue: it was not stored.
            Err(_) => Err(GroupCommitError::Closed),
        };
        drop(permit);
        self.observe();
        result
    }

    fn observe(&self) {
        QUEUED
            .with_label_values(&[self.name])
            .set(i64::try_from(self.occupancy().0).unwrap_or(i64::MAX));
    }

    /// Weight queued or being stored right now, and how much may be.
    pub fn occupancy(&self) -> (usize, usize) {
        (
            self.capacity - self.permits.available_permits().min(self.capacity),
            self.capacity,
        )
    }
}

struct Writer<W, A> {
    name: &'static str,
    store: Arc<dyn BatchStore<W, A>>,
    rx: Arc<Mutex<mpsc::Receiver<Queued<W, A>>>>,
    max_weight: usize,
}

impl<W: Work, A: Send + 'static> Writer<W, A> {
    async fn run(self, stop: CancellationToken) {
        loop {
            let batch = {
                let mut rx = self.rx.lock().await;
                let first = tokio::select! {
                    () = stop.cancelled() => return,
                    next = rx.recv() => match next {
                        Some(queued) => queued,
                        None => return,
                    },
                };
                let mut weight = first.work.weight();
                let mut batch = vec![first];
                // Whatever queued while the previous transaction ran shares this one.
                while weight < self.max_weight {
                    match rx.try_recv() {
                        Ok(queued) => {
                            weight += queued.work.weight();
                            batch.push(queued);
                        }
                        Err(_) => break,
                    }
                }
                batch
            };
            self.write(batch).await;
        }
    }

    async fn write(&self, batch: Vec<Queued<W, A>>) {
        let (work, answers): (Vec<W>, Vec<_>) =
            batch.into_iter().map(|q| (q.work, q.answer)).unzip();
        let weight: usize = work.iter().map(Work::weight).sum();
        let started = Instant::now();
        let result = self.store.store(&work).await;
        BATCH_SECONDS
            .with_label_values(&[self.name])
            .observe(started.elapsed().as_secs_f64());
        BATCH_WEIGHT
            .with_label_values(&[self.name])
            .observe(weight as f64);
        match result {
            Ok(results) if results.len() == answers.len() => {
                for (answer, result) in answers.into_iter().zip(results) {
                    // A client that gave up no longer listens; its work is stored anyway.
                    let _ = answer.send(Ok(result));
                }
            }
            Ok(results) => {
                // A store bug; its transaction committed, but which answer is whose is unknown.
                let error = StoreError::refused(format!(
                    "the store answered {} of {} items",
                    results.len(),
                    answers.len()
                ));
                tracing::error!(%error, "group commit");
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
            Err(error) if !error.is_unavailable() && answers.len() > 1 => {
                tracing::warn!(%error, requests = answers.len(), weight,
                    "storing a batch was refused; storing each of its requests on its own");
                // By index: an iterator over `work` held across the await would need `W: Sync`.
                for (index, answer) in answers.into_iter().enumerate() {
                    let alone = match self.store.store(&work[index..=index]).await {
                        Ok(mut results) if results.len() == 1 => Ok(results.remove(0)),
                        Ok(results) => Err(StoreError::refused(format!(
                            "the store answered {} of 1 item",
                            results.len()
                        ))),
                        Err(error) => Err(error),
                    };
                    let _ = answer.send(alone);
                }
            }
            Err(error) => {
                tracing::warn!(%error, requests = answers.len(), weight,
                    "storing a batch failed; every request of it is answered with the error");
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    /// Work of a given weight.
    struct Item(usize);

    impl Work for Item {
        fn weight(&self) -> usize {
            self.0
        }
    }

    /// A store that holds every batch until released, records batch sizes, and answers each
    /// item with its weight.
    struct Held {
        release: Notify,
        batches: std::sync::Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl BatchStore<Item, usize> for Held {
        async fn store(&self, batch: &[Item]) -> Result<Vec<usize>, StoreError> {
            self.release.notified().await;
            self.batches.lock().unwrap().push(batch.len());
            Ok(batch.iter().map(|item| item.0).collect())
        }
    }

    #[tokio::test]
    async fn a_full_queue_answers_at_once_and_waiting_requests_share_one_batch() {
        let store = Arc::new(Held {
            release: Notify::new(),
            batches: std::sync::Mutex::default(),
        });
        let stop = CancellationToken::new();
        let (queue, _writers) = GroupCommit::start(
            "test",
            store.clone(),
            GroupCommitConfig {
                capacity: 4,
                writers: 1,
                max_batch_weight: 100,
            },
            stop.clone(),
        );
        // The writer takes the first request and blocks on it (its weight still counts); three
        // more fill the bound of four.
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let queue = queue.clone();
            waiting.push(tokio::spawn(async move { queue.submit(Item(1)).await }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(queue.occupancy(), (4, 4));
        let full = tokio::time::timeout(Duration::from_secs(1), queue.submit(Item(1)))
            .await
            .expect("a full queue never waits");
        assert!(matches!(full, Err(GroupCommitError::Full)), "{full:?}");

        store.release.notify_one();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.release.notify_one();
        for wait in waiting {
            assert_eq!(wait.await.unwrap().unwrap(), 1);
        }
        assert_eq!(
            *store.batches.lock().unwrap(),
            vec![1, 3],
            "the queued three shared one batch"
        );
        assert_eq!(queue.occupancy().0, 0);

        stop.cancel();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            queue.submit(Item(1)).await,
            Err(GroupCommitError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_weight_limit_and_heavy_work_is_refused_beyond_capacity() {
        let store = Arc::new(Held {
            release: Notify::new(),
            batches: std::sync::Mutex::default(),
        });
        let (queue, _writers) = GroupCommit::start(
            "test-weight",
            store.clone(),
            GroupCommitConfig {
                capacity: 10,
                writers: 1,
                max_batch_weight: 3,
            },
            CancellationToken::new(),
        );
        assert!(matches!(
            queue.submit(Item(11)).await,
            Err(GroupCommitError::Full)
        ));
        let mut waiting = Vec::new();
        for weight in [1, 2, 2, 1] {
            let queue = queue.clone();
            waiting.push(tokio::spawn(
                async move { queue.submit(Item(weight)).await },
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(queue.occupancy().0, 6);
        for _ in 0..3 {
            store.release.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answers: Vec<usize> = futures::future::join_all(waiting)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        assert_eq!(
            answers,
            vec![1, 2, 2, 1],
            "each request gets its own answer"
        );
        // [1] alone (taken at once), then [2, 2] (the second passes the limit of 3, so nothing
        // more joins), then [1].
        assert_eq!(*store.batches.lock().unwrap(), vec![1, 2, 1]);
    }

    /// A store whose batches wait until three requests have queued, then fail as a database
    /// would: refusing any batch that holds the poisoned item 13, or (when `down`) refusing
    /// every batch as unreachable. Records the size of every batch it was given.
    struct Poisoned {
        down: bool,
        gate: Notify,
        batches: std::sync::Mutex<Vec<usize>>,
    }

    #[async_trait::async_trait]
    impl BatchStore<Item, usize> for Poisoned {
        async fn store(&self, batch: &[Item]) -> Result<Vec<usize>, StoreError> {
            let first = self.batches.lock().unwrap().is_empty();
            self.batches.lock().unwrap().push(batch.len());
            if first {
                // The first batch holds one request; the others queue meanwhile and share one.
                self.gate.notified().await;
            }
            if self.down {
                return Err(StoreError::unavailable("connection refused"));
            }
            if batch.iter().any(|item| item.0 == 13) {
                return Err(StoreError::refused("value 13 violates a check constraint"));
            }
            Ok(batch.iter().map(|item| item.0).collect())
        }
    }

    async fn submit_behind_a_held_batch(
        store: Arc<Poisoned>,
        items: [usize; 3],
    ) -> Vec<Result<usize, GroupCommitError>> {
        let (queue, _writers) = GroupCommit::start(
            "test-isolation",
            store.clone(),
            GroupCommitConfig {
                capacity: 100,
                writers: 1,
                max_batch_weight: 100,
            },
            CancellationToken::new(),
        );
        let held = {
            let queue = queue.clone();
            tokio::spawn(async move { queue.submit(Item(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let queued: Vec<_> = items
            .into_iter()
            .map(|weight| {
                let queue = queue.clone();
                tokio::spawn(async move { queue.submit(Item(weight)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.gate.notify_one();
        let _ = held.await.unwrap();
        futures::future::join_all(queued)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect()
    }

    #[tokio::test]
    async fn one_refused_request_fails_alone_and_its_batch_mates_are_stored() {
        let store = Arc::new(Poisoned {
            down: false,
            gate: Notify::new(),
            batches: std::sync::Mutex::default(),
        });
        let answers = submit_behind_a_held_batch(store.clone(), [2, 13, 3]).await;
        assert_eq!(answers[0].as_ref().unwrap(), &2);
        assert!(
            matches!(&answers[1], Err(GroupCommitError::Store(e)) if !e.is_unavailable()),
            "{:?}",
            answers[1]
        );
        assert_eq!(answers[2].as_ref().unwrap(), &3);
        assert_eq!(
            *store.batches.lock().unwrap(),
            vec![1, 3, 1, 1, 1],
            "the refused batch of three was stored again one by one"
        );
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_the_batch_without_retrying_each_request() {
        let store = Arc::new(Poisoned {
            down: true,
            gate: Notify::new(),
            batches: std::sync::Mutex::default(),
        });
        let answers = submit_behind_a_held_batch(store.clone(), [2, 4, 3]).await;
        for answer in &answers {
            assert!(
                matches!(answer, Err(GroupCommitError::Store(e)) if e.is_unavailable()),
                "{answer:?}"
            );
        }
        assert_eq!(
            *store.batches.lock().unwrap(),
            vec![1, 3],
            "one attempt per batch: a database that is down is not asked once per request"
        );
    }
}
