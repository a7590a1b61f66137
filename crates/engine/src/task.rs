//! A spawned task tied to its owner: dropping the handle aborts the task,
//! so work started for a future that is dropped (a stopped engine, a round
//! given up) does not run on without it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::JoinHandle;

pub(crate) struct AbortOnDrop<T>(JoinHandle<T>);

impl<T: Send + 'static> AbortOnDrop<T> {
    pub(crate) fn spawn(future: impl Future<Output = T> + Send + 'static) -> AbortOnDrop<T> {
        AbortOnDrop(tokio::spawn(future))
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = T;

    /// The task's output; its panic goes on in the owner. Only dropping
    /// the handle or the runtime's shutdown cancels the task, and either
    /// ends the owner too: a cancelled task is waited for no further.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(Ok(out)) => Poll::Ready(out),
            Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dropped_handle_aborts_its_task_and_a_kept_one_gives_its_output() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let waiting = AbortOnDrop::spawn(async move {
            let _tx = tx; // dropped only when the task ends
            std::future::pending::<()>().await
        });
        tokio::task::yield_now().await;
        drop(waiting);
        assert!(rx.await.is_err(), "the task ended with its handle");
        assert_eq!(AbortOnDrop::spawn(async { 7 }).await, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "the task's own panic")]
    async fn a_task_that_panics_panics_its_owner() {
        AbortOnDrop::spawn(async { panic!("the task's own panic") }).await
    }
}
