//! The accept loop: each TCP connection is counted against a total cap and a cap per client
//! address before hyper sees a byte of it, gets `TCP_NODELAY` and a header-read timeout, and
//! is served (HTTP/1.1 with upgrades, or HTTP/2) in a task of the server's tracker. A
//! connection over a cap is answered `503` at once and closed, without reading its request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::HttpSettings;
use crate::limits::Limit;
use crate::telemetry::Metrics;

/// Open connections, in all and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Open`], given back when it closes: when its task ends, or, for
/// a connection upgraded to a WebSocket, when the WebSocket ends (each request carries a
/// [`ConnectionSlot`], which the WebSocket task keeps).
pub(crate) struct Slot {
    // A std Mutex: held for a few map operations, never across an await.
    open: Arc<Mutex<Open>>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&self.address);
            }
        }
    }
}

/// Takes a slot for a connection from `address`, or says which cap it hits.
fn take_slot(
    open: &Arc<Mutex<Open>>,
    address: IpAddr,
    settings: &HttpSettings,
) -> Result<Slot, Limit> {
    let mut guard = open
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.total >= settings.max_connections {
        return Err(Limit::Connections);
    }
    let per_address = guard.per_address.entry(address).or_default();
    if settings.max_connections_per_address > 0
        && *per_address >= settings.max_connections_per_address
    {
        return Err(Limit::ConnectionsPerAddress);
    }
    *per_address += 1;
    guard.total += 1;
    Ok(Slot {
        open: open.clone(),
        address,
    })
}

/// Serves `app` on `listener` until `shutdown`; each connection runs in a task of `tasks`,
/// which finishes its requests and closes (WebSocket and SSE streams end on `shutdown`).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    settings: HttpSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small frames go out at once: Nagle's algorithm would hold them for the peer's ACK.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        match take_slot(&open, peer.ip(), &settings) {
            Ok(slot) => {
                tasks.spawn(connection(
                    stream,
                    peer,
                    app.clone(),
                    settings.clone(),
                    (metrics.clone(), shutdown.clone()),
                    slot,
                ));
            }
            Err(limit) => {
                metrics.limits.count(limit);
                tracing::debug!(client = %peer, limit = limit.label(), "connection refused by a limit");
                tasks.spawn(refuse(stream, limit));
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: HttpSettings,
    (metrics, shutdown): (Arc<Metrics>, CancellationToken),
    slot: Slot,
) {
    let slot = ConnectionSlot(Arc::new(slot));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(slot.clone());
        app.clone().oneshot(request)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(settings.header_timeout));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                // hyper ends a connection whose request headers did not arrive in time.
                if err
                    .downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout)
                {
                    metrics.limits.count(Limit::HeaderTimeout);
                }
                tracing::debug!(client = %peer, error = %err, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The connection a request came on, counted until every holder drops it.
#[derive(Clone)]
pub(crate) struct ConnectionSlot(#[allow(dead_code)] Arc<Slot>);

/// Answers a connection over a cap with `503` and closes it (after reading its request's head,
/// briefly: closing with unread bytes would reset the connection before the client reads).
async fn refuse(mut stream: TcpStream, limit: Limit) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read_head).await;
    let body = format!(
        r#"{{"errors":[{{"message":"too many connections ({}); try again later","extensions":{{"code":"TOO_MANY_CONNECTIONS"}}}}]}}"#,
        limit.label()
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), write).await;
}
