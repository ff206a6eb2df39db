//! `Http2Channel` against a real tonic server (the gRPC health service):
//! calls arrive, concurrent first calls share one connection, a dead
//! address is `Unavailable`, and the channel reconnects when the service
//! comes back on the same address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tp_server::Http2Channel;

/// A health server on `addr` that counts the connections it accepts.
struct CountingServer {
    accepted: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl CountingServer {
    async fn start(addr: SocketAddr) -> (Self, SocketAddr) {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let incoming = futures_util::stream::unfold(listener, move |listener| {
            let counter = counter.clone();
            async move {
                let accepted = listener.accept().await.map(|(stream, _)| stream);
                counter.fetch_add(1, Ordering::SeqCst);
                Some((accepted, listener))
            }
        });
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
        (
            Self {
                accepted,
                stop,
                task,
            },
            addr,
        )
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("server task");
    }
}

async fn check(channel: &Http2Channel) -> Result<ServingStatus, tonic::Status> {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await?;
    Ok(response.into_inner().status())
}

/// `n` health checks started at once on clones of `channel`, each in its
/// own task, and their results.
async fn concurrent_checks(
    channel: &Http2Channel,
    n: usize,
) -> Vec<Result<ServingStatus, tonic::Status>> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let channel = channel.clone();
            tokio::spawn(async move { check(&channel).await })
        })
        .collect();
    let mut results = Vec::with_capacity(n);
    for call in calls {
        results.push(call.await.expect("task"));
    }
    results
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn concurrent_first_calls_share_one_connection() {
    let (server, addr) = CountingServer::start(loopback()).await;
    let channel = Http2Channel::lazy(&format!("http://{addr}")).expect("url");
    assert_eq!(server.accepted(), 0, "lazy: nothing connects before a call");
    for call in concurrent_checks(&channel, 16).await {
        assert_eq!(call.expect("call"), ServingStatus::Serving);
    }
    assert_eq!(check(&channel).await.expect("call"), ServingStatus::Serving);
    assert_eq!(server.accepted(), 1, "every call went over one connection");
    server.stop().await;
}

#[tokio::test]
async fn an_address_nobody_listens_on_is_unavailable_naming_it() {
    let unused = TcpListener::bind(loopback()).await.expect("bind");
    let addr = unused.local_addr().expect("addr");
    drop(unused);
    let channel = Http2Channel::lazy(&format!("http://{addr}")).expect("url");
    for call in concurrent_checks(&channel, 8).await {
        let status = call.expect_err("nobody listens");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains(&addr.to_string()),
            "the message names the address: {status:?}"
        );
    }
}

#[tokio::test]
async fn the_channel_reconnects_when_the_service_comes_back() {
    let (first, addr) = CountingServer::start(loopback()).await;
    let channel = Http2Channel::lazy(&format!("http://{addr}")).expect("url");
    assert_eq!(check(&channel).await.expect("call"), ServingStatus::Serving);
    first.stop().await;

    // Gone: calls fail (the first may meet the closing connection), and
    // once the channel has seen it close, with `Unavailable`.
    let mut unavailable = false;
    for _ in 0..200 {
        let status = check(&channel).await.expect_err("the service is gone");
        if status.code() == Code::Unavailable {
            unavailable = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(unavailable, "calls to a stopped service end up Unavailable");

    let (second, _) = CountingServer::start(addr).await;
    assert_eq!(
        check(&channel).await.expect("reconnected"),
        ServingStatus::Serving
    );
    assert_eq!(check(&channel).await.expect("call"), ServingStatus::Serving);
    assert_eq!(second.accepted(), 1, "one new connection, kept");
    second.stop().await;
}
