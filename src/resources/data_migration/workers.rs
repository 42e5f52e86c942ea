//! The workers both parts of the migration share (issue 28): the PostgreSQL and the
//! MongoDB databases carried at the same time, each part by its own workers over its
//! own queue, all of them under one bound (`parallelism`) and one failed flag.
//!
//! One semaphore rather than one queue of both parts' databases: each part works
//! through temporary containers of its own, started, sealed and cleaned up by that
//! part, and orders its own queue (PostgreSQL's largest first, by the sizes its
//! server reports; MongoDB's in list order, no size being known before its count).
//! A permit held for each database under way, from its export to its last
//! comparison, keeps the two parts together at `parallelism`, which is what the
//! Services machine's cores and sshd's sessions see. Tokio's semaphore is fair (first
//! come, first served): a worker that gives its permit back queues behind those
//! already waiting, so neither part starves the other.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::{watch, Semaphore};

use crate::plugin::{stop, Diagnostic, Diagnostics};

/// What became of a database a worker took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// Carried (or found identical, or nothing to carry): done with.
    Done,
    /// Not carried after all (the migration halted during its export): back at the
    /// head of the queue, among what is left.
    PutBack,
}

/// The bound and the failed flag the two parts share.
pub(super) struct Shared {
    permits: Semaphore,
    bound: usize,
    /// Whether workers may ask for permits yet (see [`Shared::gated`]). Workers wait
    /// here, not in the semaphore's queue: the part that opens the gate asks for its
    /// permits at once, and its databases (the largest first) do not queue behind the
    /// other part's workers, which were waiting before it.
    open: watch::Sender<bool>,
    failed: AtomicBool,
    /// See [`Shared::left_running`].
    left_running: AtomicBool,
}

impl Shared {
    /// At most `bound` databases under way at once (at least one).
    pub(super) fn new(bound: usize) -> Shared {
        Shared::with_gate(bound, false)
    }

    /// The same, but no database taken before [`Shared::open`]: a check that must
    /// pass before any database is carried (every PostgreSQL database to carry is in
    /// the embedded server) finishes while the containers start, and its failure
    /// leaves every target untouched.
    pub(super) fn gated(bound: usize) -> Shared {
        Shared::with_gate(bound, true)
    }

    fn with_gate(bound: usize, gated: bool) -> Shared {
        let bound = bound.max(1);
        Shared {
            permits: Semaphore::new(bound),
            bound,
            open: watch::Sender::new(!gated),
            failed: AtomicBool::new(false),
            left_running: AtomicBool::new(false),
        }
    }

    /// Lets the workers take databases (once; later calls do nothing). Called after
    /// the gate's check, and whatever becomes of it: a failed check sets the failed
    /// flag first, and the workers waiting then take nothing.
    pub(super) fn open(&self) {
        self.open.send_replace(true);
    }

    /// Returns once the gate is open. No deadline of its own: the part that opens it
    /// does so whatever becomes of its check, each command of which has its deadline.
    async fn opened(&self) {
        // The sender lives as long as `self`: the wait ends only by the gate opening.
        let _ = self.open.subscribe().wait_for(|open| *open).await;
    }

    /// A database failed, or a part could not start or finish: no worker of either
    /// part takes another database.
    pub(super) fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// A part's `docker rm -f` of one of its containers did not say it removed it:
    /// the migration lists its containers again before it ends.
    pub(super) fn left_running(&self) {
        self.left_running.store(true, Ordering::SeqCst);
    }

    pub(super) fn any_left_running(&self) -> bool {
        self.left_running.load(Ordering::SeqCst)
    }

    /// No worker takes another database, nor starts another import: one failed (in
    /// either part), or Terraform asked the provider to stop.
    pub(super) fn halted(&self) -> bool {
        self.failed() || stop::requested()
    }

    /// How many databases may be under way at once.
    pub(super) fn bound(&self) -> usize {
        self.bound
    }
}

/// What one part's workers did.
pub(super) struct Ran<T> {
    /// Every error of a database, in the order of the workers.
    pub errors: Diagnostics,
    /// The databases no worker carried, in queue order (after a stop or a failure).
    pub left: Vec<T>,
}

impl<T: std::fmt::Display> Ran<T> {
    /// One part's result: its own errors; else, with databases left, the stop's error
    /// after a stop, or a warning naming them when the other part's failure halted
    /// this one (the failure is reported as that part's error). `what` names the
    /// databases (`MongoDB database(s)`), `part` the part (`MongoDB`).
    pub(super) fn result(self, what: &str, part: &str, shared: &Shared) -> Result<(), Diagnostics> {
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        if self.left.is_empty() {
            return Ok(());
        }
        let left: Vec<String> = self.left.iter().map(ToString::to_string).collect();
        if shared.failed() && !stop::requested() {
            return Err(Diagnostic::warning(
                format!("{part} databases not carried over"),
                format!(
                    "{what} {} were not carried over: no database is taken after another failed (the \
                     error says which). The next apply carries them.",
                    left.join(", ")
                ),
            )
            .into());
        }
        // Only a stop leaves databases behind without a failure.
        Err(super::apply::stopped_error(&format!(
            "before {what} {}",
            left.join(", ")
        )))
    }
}

/// Carries `items` in their order by `work`, with as many workers as the bound allows
/// (no more than there are items); each worker holds one of `shared`'s permits while
/// `work` runs on a database. After a failure (here or in the other part) or a stop no
/// worker takes another item; those under way finish. Runs in the caller's task, so
/// that `work` sees the apply's stop request.
pub(super) async fn each<T, F, Fut>(shared: &Shared, items: Vec<T>, work: F) -> Ran<T>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<Taken, Diagnostics>>,
{
    let workers = shared.bound.min(items.len()).max(1);
    let queue = Mutex::new(VecDeque::from(items));
    let (queue, work) = (&queue, &work);
    let worker = || async move {
        loop {
            if shared.halted() {
                return Ok(());
            }
            // The permit first, then the database: a worker waiting holds none (the
            // queue's order holds), and one that finds the migration halted once it
            // has a permit takes nothing. The wait has no deadline of its own: each
            // holder's commands run under the command deadline, and it ends with them.
            shared.opened().await;
            if shared.halted() {
                return Ok(());
            }
            let Ok(_permit) = shared.permits.acquire().await else {
                return Ok(());
            };
            if shared.halted() {
                return Ok(());
            }
            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            let Some(item) = next else {
                return Ok(());
            };
            match work(item.clone()).await {
                Ok(Taken::Done) => {}
                Ok(Taken::PutBack) => {
                    queue
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_front(item);
                    return Ok(());
                }
                Err(d) => {
                    shared.fail();
                    return Err(d);
                }
            }
        }
    };
    let mut errors = Diagnostics::new();
    for r in futures_util::future::join_all((0..workers).map(|_| worker())).await {
        if let Err(d) = r {
            errors.extend(d);
        }
    }
    let left = std::mem::take(&mut *queue.lock().unwrap_or_else(|e| e.into_inner()));
    Ran {
        errors,
        left: left.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// How many items are under way now, and the most ever at once.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        most: AtomicUsize,
    }

    impl Gauge {
        async fn hold(&self, ms: u64) {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[tokio::test]
    async fn both_parts_together_stay_within_the_bound_and_overlap() {
        let shared = Shared::new(3);
        let gauge = Gauge::default();
        let done = Mutex::new(Vec::new());
        let part = |prefix: &'static str, n: usize| {
            let (gauge, done) = (&gauge, &done);
            each(&shared, names(prefix, n), move |db: String| async move {
                gauge.hold(20).await;
                done.lock().unwrap().push(db);
                Ok(Taken::Done)
            })
        };
        let (pg, mongo) = tokio::join!(part("pg", 9), part("mongo", 4));
        assert!(pg.errors.is_empty() && mongo.errors.is_empty());
        assert!(pg.left.is_empty() && mongo.left.is_empty());
        assert_eq!(gauge.most.load(Ordering::SeqCst), 3, "not 3 at once");
        let done = done.into_inner().unwrap();
        assert_eq!(done.len(), 13);
        // MongoDB's databases are not all after PostgreSQL's last.
        let last_pg = done.iter().rposition(|d| d.starts_with("pg")).unwrap();
        assert!(
            done[..last_pg].iter().any(|d| d.starts_with("mongo")),
            "{done:?}"
        );
    }

    #[tokio::test]
    async fn a_failure_in_one_part_stops_both_from_taking_more() {
        // Two permits: pg0 holds one until mongo0 has failed; pg1 ends at once, and its
        // permit goes to MongoDB's first worker (first come, first served), whose
        // database fails.
        let shared = Shared::new(2);
        let events = Mutex::new(Vec::new());
        let note = |e: String| events.lock().unwrap().push(e);
        let failed = tokio::sync::Notify::new();
        let (note, failed) = (&note, &failed);
        let pg = each(&shared, names("pg", 9), |db: String| async move {
            note(format!("start {db}"));
            if db == "pg0" {
                failed.notified().await;
            } else {
                tokio::task::yield_now().await;
            }
            note(format!("end {db}"));
            Ok(Taken::Done)
        });
        let mongo = each(&shared, names("mongo", 4), |db: String| async move {
            note(format!("start {db}"));
            tokio::task::yield_now().await;
            note(format!("fail {db}"));
            failed.notify_one();
            Err(Diagnostic::error(format!("{db} failed"), "injected").into())
        });
        let (pg, mongo) = tokio::join!(pg, mongo);
        let events = events.into_inner().unwrap();
        assert!(shared.failed());
        assert!(pg.errors.is_empty());
        assert_eq!(mongo.errors.0.len(), 1);
        // pg0, under way, finished; nothing was taken after the failure, in either part.
        assert_eq!(
            events,
            [
                "start pg0",
                "start pg1",
                "end pg1",
                "start mongo0",
                "fail mongo0",
                "end pg0"
            ]
        );
        assert_eq!(pg.left, names("pg", 9)[2..]);
        assert_eq!(mongo.left, names("mongo", 4)[1..]);
    }

    #[tokio::test]
    async fn a_halted_export_is_put_back_and_a_stop_takes_nothing_more() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let shared = Shared::new(2);
        let tx = &tx;
        let ran = stop::scope(
            rx,
            each(&shared, names("db", 5), |db: String| async move {
                if db == "db1" {
                    tx.send_replace(true);
                    return Ok(Taken::PutBack);
                }
                Ok(Taken::Done)
            }),
        )
        .await;
        assert!(ran.errors.is_empty() && !shared.failed());
        assert_eq!(ran.left, ["db1", "db2", "db3", "db4"]);
    }

    #[tokio::test]
    async fn the_gate_gives_the_first_permits_to_the_part_that_opened_it() {
        // MongoDB's workers wait at the gate before PostgreSQL's part opens it; the
        // largest PostgreSQL databases (first in its queue) must not wait behind them.
        let shared = Shared::gated(2);
        let events = Mutex::new(Vec::new());
        let events = &events;
        let work = |db: String| async move {
            events.lock().unwrap().push(db);
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(Taken::Done)
        };
        let mongo = each(&shared, names("mongo", 2), work);
        let pg = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            shared.open();
            each(&shared, names("pg", 2), work).await
        };
        let (mongo, pg) = tokio::join!(mongo, pg);
        assert!(mongo.left.is_empty() && pg.left.is_empty());
        let events = events.lock().unwrap().clone();
        assert_eq!(events[..2], ["pg0", "pg1"], "{events:?}");
    }

    #[tokio::test]
    async fn a_gated_bound_takes_nothing_until_opened_and_a_failed_gate_nothing_at_all() {
        let shared = Shared::gated(2);
        let taken = AtomicUsize::new(0);
        let part = each(&shared, names("mongo", 4), |_db: String| {
            let taken = &taken;
            async move {
                taken.fetch_add(1, Ordering::SeqCst);
                Ok(Taken::Done)
            }
        });
        let gate = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(taken.load(Ordering::SeqCst), 0, "taken before the gate");
            shared.open();
            shared.open();
        };
        let (ran, ()) = tokio::join!(part, gate);
        assert!(ran.left.is_empty());
        assert_eq!(taken.load(Ordering::SeqCst), 4);
        assert_eq!(shared.permits.available_permits(), 2);

        let shared = Shared::gated(2);
        let gate = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            shared.fail();
            shared.open();
        };
        let part = each(&shared, names("mongo", 4), |_db: String| async {
            Ok::<Taken, Diagnostics>(Taken::Done)
        });
        let (ran, ()) = tokio::join!(part, gate);
        assert_eq!(ran.left.len(), 4);
    }
}
