//! Terraform's stop request (StopProvider: Ctrl-C, a cancelled CI job), as apply steps
//! see it. An apply is never dropped half-way: it runs inside [`scope`], looks at
//! [`requested`] at its safe points, and returns a state that records what it already
//! changed. Waits that change nothing may be cut short with [`or_stop`].

use std::future::Future;

use tokio::sync::watch;

tokio::task_local! {
    static STOP: watch::Receiver<bool>;
}

/// Runs `fut` (one apply step) with `rx` as its stop signal.
pub(crate) async fn scope<F: Future>(rx: watch::Receiver<bool>, fut: F) -> F::Output {
    STOP.scope(rx, fut).await
}

/// True once Terraform has asked the provider to stop. Always false outside an apply.
pub(crate) fn requested() -> bool {
    STOP.try_with(|rx| *rx.borrow()).unwrap_or(false)
}

/// Resolves when Terraform asks the provider to stop; never outside an apply.
pub(crate) async fn signalled() {
    let Ok(mut rx) = STOP.try_with(Clone::clone) else {
        return std::future::pending().await;
    };
    if rx.wait_for(|s| *s).await.is_err() {
        // The provider is going away without a stop request: nothing to wait for.
        std::future::pending::<()>().await;
    }
}

/// Runs `fut` unless a stop request comes first (then `None`; `fut` is dropped). Only
/// for work whose abandonment changes nothing, such as a wait or a read.
pub(crate) async fn or_stop<T>(fut: impl Future<Output = T>) -> Option<T> {
    if requested() {
        return None;
    }
    tokio::select! {
        v = fut => Some(v),
        _ = signalled() => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stop_cuts_a_wait_short_and_is_seen_inside_the_scope_only() {
        let (tx, rx) = watch::channel(false);
        assert!(!requested());
        let step = scope(rx, async {
            assert!(!requested());
            let waited = or_stop(tokio::time::sleep(Duration::from_secs(30))).await;
            (waited.is_none(), requested())
        });
        let stopper = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(true);
        };
        let ((cut, seen), ()) = tokio::join!(step, stopper);
        assert!(cut, "the wait was not cut short");
        assert!(seen);
        assert!(!requested(), "outside the scope nothing is stopped");
    }

    #[tokio::test]
    async fn without_a_stop_the_work_finishes() {
        let (_tx, rx) = watch::channel(false);
        let v = scope(rx, or_stop(async { 7 })).await;
        assert_eq!(v, Some(7));
    }
}
