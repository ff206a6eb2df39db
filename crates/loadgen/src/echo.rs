//! The bare-tonic baseline: a minimal unary and server-streaming echo
//! service with tonic's defaults and nothing else (no layers, no database),
//! run as its own process (`tp-loadgen echo-server`) so it is measured as
//! the services are.

use std::net::SocketAddr;
use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("thoughtpartner.bench.v1");
}

use pb::echo_service_server::{EchoService, EchoServiceServer};
use pb::{EchoRequest, EchoResponse};

/// Most pieces one EchoStream call may ask for.
const MAX_CHUNKS: u32 = 1_000;

#[derive(Default)]
pub struct Echo;

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            text: request.into_inner().text,
        }))
    }

    type EchoStreamStream = EchoStream;

    async fn echo_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::EchoStreamStream>, Status> {
        let EchoRequest { text, chunks } = request.into_inner();
        if chunks == 0 || chunks > MAX_CHUNKS {
            return Err(Status::invalid_argument(format!(
                "chunks must be 1..={MAX_CHUNKS}, got {chunks}"
            )));
        }
        // As the conversation service streams a reply: a bounded channel fed
        // by a task, one message per piece.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for _ in 0..chunks {
                let piece = EchoResponse { text: text.clone() };
                if tx.send(Ok(piece)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Serves the echo service on `addr` until the process is stopped.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() {
        anyhow::bail!("the echo server listens on loopback only, not {addr}");
    }
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(EchoServiceServer::new(Echo))
        .serve(addr)
        .await?;
    Ok(())
}
