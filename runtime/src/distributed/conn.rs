//! Framed TCP connections shared by the coordinator and the workers.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::wire::{MAX_FRAME, decode_msg, encode_msg};

pub(crate) type Reader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;
pub(crate) type Writer = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

pub(crate) fn split(stream: TcpStream) -> (Reader, Writer) {
    // Small frames (credits, control) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    (FramedRead::new(r, codec()), FramedWrite::new(w, codec()))
}

/// Reads the next frame; `Err` on a closed connection, an I/O error or
/// (with a timeout) silence.
pub(crate) async fn next_frame(r: &mut Reader, timeout: Option<Duration>) -> Result<Bytes, String> {
    let next = async {
        match r.next().await {
            Some(Ok(b)) => Ok(b.freeze()),
            Some(Err(e)) => Err(format!("connection error: {e}")),
            None => Err("connection closed".to_string()),
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, next)
            .await
            .map_err(|_| format!("nothing received for {} ms", t.as_millis()))?,
        None => next.await,
    }
}

pub(crate) async fn next_msg<M: for<'de> serde::Deserialize<'de>>(
    r: &mut Reader,
    timeout: Option<Duration>,
) -> Result<M, String> {
    let b = next_frame(r, timeout).await?;
    decode_msg(&b)
}

pub(crate) async fn send_msg<M: Serialize>(w: &mut Writer, m: &M) -> Result<(), String> {
    let b = encode_msg(m)?;
    w.send(b).await.map_err(|e| format!("cannot send: {e}"))
}

/// Writes every queued frame, flushing only when the queue runs dry, so that
/// frames queued together leave in one system call.
pub(crate) async fn write_loop(mut w: Writer, mut rx: UnboundedReceiver<Bytes>) {
    while let Some(first) = rx.recv().await {
        if w.feed(first).await.is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if w.feed(more).await.is_err() {
                return;
            }
        }
        if SinkExt::<Bytes>::flush(&mut w).await.is_err() {
            return;
        }
    }
}

/// Connects, retrying refused connections until `deadline` (a peer that is
/// still starting up).
pub(crate) async fn connect_retry(addr: &str, within: Duration) -> Result<TcpStream, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.max(Duration::from_millis(1)), TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if tokio::time::Instant::now() + Duration::from_millis(50) < deadline => {
                tracing::debug!(addr, error = %e, "connect failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => return Err(format!("cannot connect to {addr}: {e}")),
            Err(_) => return Err(format!("cannot connect to {addr}: timed out")),
        }
    }
}
