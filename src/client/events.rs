//! [`Events`]: the stream of a subscription's notifications.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::Stream;
use serde::de::DeserializeOwned;

use super::ClientError;

/// A stream of notifications; ends when the daemon goes away or the
/// subscription ends (after a `lagged` event). A daemon that sent an
/// over-long line ends it with one [`ClientError::ReplyTooLong`] first.
pub struct Events<T> {
    pub(super) inner: jsonrpsee::core::client::Subscription<T>,
    pub(super) too_long: Arc<AtomicBool>,
    pub(super) limit: usize,
    pub(super) done: bool,
}

impl<T: DeserializeOwned> Stream for Events<T> {
    type Item = Result<T, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(None) => {
                self.done = true;
                if self.too_long.load(Ordering::Acquire) {
                    let limit = self.limit;
                    return Poll::Ready(Some(Err(ClientError::ReplyTooLong { limit })));
                }
                Poll::Ready(None)
            }
            other => other.map(|o| o.map(|r| r.map_err(|e| ClientError::Protocol(e.to_string())))),
        }
    }
}

impl<T> Unpin for Events<T> {}
