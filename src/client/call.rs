//! [`Call`]: one call of a typed [`Client`] method, awaited for its typed
//! result or read as the JSON the daemon sent.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Client, ClientError};

/// One call of a typed [`Client`] method: `.await` it for the typed result
/// (`T`, read from the wire shape `W`), or [`Call::json`] for the reply as
/// the daemon sent it, every field kept (`dscode-hostctl --json`).
#[must_use = "a call does nothing until awaited"]
pub struct Call<'a, T, W = T> {
    pub(super) client: &'a Client,
    pub(super) method: &'static str,
    pub(super) params: Result<Value, ClientError>,
    pub(super) map: fn(W) -> T,
    pub(super) _wire: PhantomData<fn() -> W>,
}

impl<T, W> Call<'_, T, W> {
    /// The method this call names.
    pub fn method(&self) -> &'static str {
        self.method
    }

    /// The result as JSON, as the daemon sent it.
    pub async fn json(self) -> Result<Value, ClientError> {
        self.client.call(self.method, self.params?).await
    }
}

impl<'a, T: 'a, W: DeserializeOwned + 'a> IntoFuture for Call<'a, T, W> {
    type Output = Result<T, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T, ClientError>> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let wire: W = self.client.call(self.method, self.params?).await?;
            Ok((self.map)(wire))
        })
    }
}
