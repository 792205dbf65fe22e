//! A read or a write bounded by a deadline, with the timer set only when it has to wait.

use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `fut` until `deadline` (`None` when it passed first). Most reads and writes on a busy
/// connection finish at their first poll: the timer is set (and its place allocated) only for
/// one that has to wait, and the future is polled where it was made, not moved into a second
/// place as an `async fn` would (requests' futures hold these).
pub fn by_deadline<F, D>(fut: F, deadline: D) -> ByDeadline<F, D>
where
    F: std::future::Future,
    D: FnOnce() -> tokio::time::Instant,
{
    ByDeadline {
        fut,
        deadline: Some(deadline),
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`by_deadline`].
    pub struct ByDeadline<F, D> {
        #[pin]
        fut: F,
        deadline: Option<D>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: std::future::Future, D: FnOnce() -> tokio::time::Instant> std::future::Future
    for ByDeadline<F, D>
{
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.fut.poll(cx) {
            return Poll::Ready(Some(r));
        }
        let timer = match this.timer {
            Some(timer) => timer,
            None => {
                let at = this
                    .deadline
                    .take()
                    .map_or_else(tokio::time::Instant::now, |d| d());
                this.timer.insert(Box::pin(tokio::time::sleep_until(at)))
            }
        };
        timer.as_mut().poll(cx).map(|()| None)
    }
}
