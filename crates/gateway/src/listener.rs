//! The gateway's listener, thread per core: one task accepts on the shared runtime and hands
//! each connection to the worker thread serving the fewest; every worker runs an event loop
//! of its own (a current-thread tokio runtime) with its own upstream connection pools, so a
//! request, its upstream connection and its answer never cross threads — as Envoy and Pingora
//! do, and nginx's workers. Workers stop taking connections at `stop`, let those open finish
//! (HTTP/1.1 keep-alive ones close after their current request, HTTP/2 ones get GOAWAY), and
//! keep their event loops alive until [`Listening`] is released, because store and Redis
//! connections they opened are registered with them and may still be used by the rest of the
//! process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use crate::tls::OverTls;

/// A running listener: where it listens, and what to await and release at shutdown.
pub struct Listening {
    pub addr: SocketAddr,
    /// Ends once every worker has stopped serving (after `stop`, when their connections closed).
    pub served: tokio::task::JoinHandle<()>,
    /// Dropped last (after the store closed): the workers' event loops may then end.
    pub release: watch::Sender<bool>,
}

/// How many worker threads `threads` means (0: one per CPU core).
pub fn worker_count(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct Worker {
    conns: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    open: Arc<AtomicUsize>,
    /// `runway_gateway_connections_open{worker}`.
    gauge: metrics::Gauge,
}

/// Accepts on `listener` until `stop`, serving each connection with `app` on the least busy
/// of `threads` workers (TLS through `tls` when given).
pub fn start(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    threads: usize,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Listening> {
    let addr = listener.local_addr()?;
    let (release, released) = watch::channel(false);
    let mut workers = Vec::new();
    let mut done = Vec::new();
    for i in 0..worker_count(threads) {
        let (tx, rx) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let (served_tx, served_rx) = tokio::sync::oneshot::channel::<()>();
        let gauge = metrics::gauge!("runway_gateway_connections_open", "worker" => i.to_string());
        let (app, tls, stop, released) = (app.clone(), tls.clone(), stop.clone(), released.clone());
        let counter = (open.clone(), gauge.clone());
        std::thread::Builder::new().name(format!("runway-gateway-{i}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a gateway worker");
                    return;
                }
            };
            rt.block_on(serve_worker(rx, app, tls, stop, counter));
            let _ = served_tx.send(());
            let mut released = released;
            rt.block_on(async move {
                let _ = released.wait_for(|v| *v).await;
            });
        })?;
        workers.push(Worker { conns: tx, open, gauge });
        done.push(served_rx);
    }
    metrics::gauge!("runway_gateway_worker_threads").set(workers.len() as f64);
    let served = tokio::spawn(async move {
        accept(listener, workers, stop).await;
        for d in done {
            let _ = d.await;
        }
    });
    Ok(Listening { addr, served, release })
}

async fn accept(listener: tokio::net::TcpListener, workers: Vec<Worker>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(error = %e, "gateway accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|v| *v).await; } => return,
        };
        let _ = tcp.set_nodelay(true);
        let Ok(tcp) = tcp.into_std() else { continue };
        let Some(w) = workers.iter().min_by_key(|w| w.open.load(Ordering::Relaxed)) else { return };
        w.open.fetch_add(1, Ordering::Relaxed);
        w.gauge.increment(1.0);
        if w.conns.send((tcp, addr)).is_err() {
            w.open.fetch_sub(1, Ordering::Relaxed);
            w.gauge.decrement(1.0);
        }
    }
}

/// Decrements a worker's count of open connections when the connection ends.
struct OpenGuard((Arc<AtomicUsize>, metrics::Gauge));

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
        self.0.1.decrement(1.0);
    }
}

async fn serve_worker(
    mut conns: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
    open: (Arc<AtomicUsize>, metrics::Gauge),
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, addr) = tokio::select! {
            c = conns.recv() => match c {
                Some(c) => c,
                None => break,
            },
            _ = async { let _ = stop.wait_for(|v| *v).await; } => break,
        };
        let guard = OpenGuard(open.clone());
        let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else { continue };
        let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
        tokio::spawn(async move {
            let _guard = guard;
            let over_tls = tls.is_some();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
                if over_tls {
                    req.extensions_mut().insert(OverTls);
                }
                app.clone().oneshot(req.map(Body::new))
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = match tls {
                None => watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(tcp), service)).await,
                Some(acceptor) => {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        metrics::counter!("runway_gateway_tls_handshake_failures_total").increment(1);
                        return;
                    };
                    watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(tls), service)).await
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "gateway connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
