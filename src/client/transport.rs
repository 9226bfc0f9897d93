//! The line transport under jsonrpsee's client: one JSON message per line
//! each way, reply lines bounded, and params sent by name.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use interprocess::local_socket::tokio::Stream as LocalStream;
use jsonrpsee::core::client::{ReceivedMessage, TransportReceiverT, TransportSenderT};
use jsonrpsee::core::traits::ToRpcParams;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio_util::codec::FramedRead;

use crate::lines::{BoundedLines, Line};

/// Line transport: one JSON message per line.
pub(super) struct Sender(pub(super) WriteHalf<LocalStream>);
pub(super) struct Receiver {
    pub(super) lines: FramedRead<ReadHalf<LocalStream>, BoundedLines>,
    pub(super) limit: usize,
    /// Set when the daemon sent an over-long line, for the event streams.
    pub(super) too_long: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum TransportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("reply line longer than {0} bytes")]
    TooLong(usize),
}

impl TransportSenderT for Sender {
    type Error = TransportError;
    async fn send(&mut self, mut msg: String) -> Result<(), TransportError> {
        msg.push('\n');
        self.0.write_all(msg.as_bytes()).await?;
        Ok(())
    }
}

impl TransportReceiverT for Receiver {
    type Error = TransportError;
    async fn receive(&mut self) -> Result<ReceivedMessage, TransportError> {
        loop {
            return match self.lines.next().await {
                None => Err(TransportError::Closed),
                Some(Err(e)) => Err(e.into()),
                Some(Ok(Line::TooLong(_))) => {
                    self.too_long.store(true, Ordering::Release);
                    Err(TransportError::TooLong(self.limit))
                }
                Some(Ok(Line::Complete(b))) if b.is_empty() => continue,
                Some(Ok(Line::Complete(b))) => Ok(ReceivedMessage::Bytes(b.to_vec())),
            };
        }
    }
}

/// Params as a JSON value (by name).
pub(super) struct Named(pub(super) Value);

impl ToRpcParams for Named {
    fn to_rpc_params(self) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        serde_json::value::to_raw_value(&self.0).map(Some)
    }
}
