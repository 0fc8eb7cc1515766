//! The `/voike/sync/1` request-response codec: postcard, with sizes capped before decoding.
//!
//! A message is the whole stream (the writer closes its side after writing), so the reader takes
//! at most the cap plus one byte and refuses anything longer without decoding it.

use std::io;
use std::sync::Arc;

use futures::prelude::*;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use voike_protocol::sync::{MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, SyncRequest, SyncResponse};

use crate::metrics::Metrics;

/// Codec of sync requests and responses; counts payload bytes in `metrics`.
#[derive(Clone, Debug)]
pub struct SyncCodec {
    metrics: Arc<Metrics>,
}

impl SyncCodec {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        SyncCodec { metrics }
    }
}

async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, cap: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(cap as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("sync message larger than {cap} bytes"),
        ));
    }
    Ok(buf)
}

fn decode<M: serde::de::DeserializeOwned>(buf: &[u8]) -> io::Result<M> {
    postcard::from_bytes(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

async fn write_all<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.close().await
}

impl Codec for SyncCodec {
    type Protocol = StreamProtocol;
    type Request = SyncRequest;
    type Response = SyncResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_capped(io, MAX_REQUEST_BYTES).await?;
        self.metrics.bytes_received.inc_by(buf.len() as u64);
        decode(&buf)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        let buf = read_capped(io, MAX_RESPONSE_BYTES).await?;
        self.metrics.bytes_received.inc_by(buf.len() as u64);
        decode(&buf)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: SyncRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = postcard::to_stdvec(&req).map_err(io::Error::other)?;
        self.metrics.bytes_sent.inc_by(bytes.len() as u64);
        write_all(io, &bytes).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: SyncResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = postcard::to_stdvec(&res).map_err(io::Error::other)?;
        self.metrics.bytes_sent.inc_by(bytes.len() as u64);
        write_all(io, &bytes).await
    }
}
