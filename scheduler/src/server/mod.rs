//! The head's I/O edge, by concern:
//!
//! - [`config`]: [`HeadConfig`] and [`TlsIdentity`].
//! - this module: [`start`] and the [`HeadHandle`] it returns.
//! - `cmd`: the events gRPC handlers send to the event loop.
//! - `event_loop`: the one task that owns the [`Core`]: it drains queued
//!   events, runs one scheduling pass, flushes the outbox.
//! - `outbox`: the core's [`Outbox`](crate::core::Outbox), batching
//!   messages per stream.
//! - `persistence`: the durable log beside the core: replay at start,
//!   deduplication and acknowledgement of driver batches, compaction.
//! - `sessions`: opening worker and driver sessions (gRPC or in-process).
//! - `grpc`: the tonic service; handlers only unpack and forward.
//! - `state`: the state API's queries and answers (the loop answers).
//! - `dashboard`: the web page, its JSON API and `/metrics` (axum).
//! - `metrics`: the Prometheus series, read from one loop snapshot.

mod admission;
mod cmd;
pub mod config;
mod dashboard;
mod event_loop;
mod grpc;
mod metrics;
mod outbox;
mod persistence;
mod sessions;
mod state;
mod uploads;

pub use admission::AdmissionLimits;
pub use config::{HeadConfig, TlsIdentity};

use crate::core::{ClusterStatus, Core, CoreConfig};
use cmd::Cmd;
use grpc::HeadService;
use persistence::LoopState;
use sessions::InProcessHead;
use shoal_proto::local::LocalLink;
use shoal_proto::pb::head_server::HeadServer;
use shoal_store::binaries::BinaryStore;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A running head. Dropping it does not stop it; call [`HeadHandle::shutdown`].
pub struct HeadHandle {
    /// The address the head listens on.
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    events: mpsc::UnboundedSender<Cmd>,
    store: BinaryStore,
    /// Why the event loop ended, once it has.
    loop_ended: tokio::sync::watch::Receiver<Option<String>>,
    /// Where the dashboard listens, and who may read it.
    dashboard: Option<(SocketAddr, std::sync::Arc<dashboard::auth::DashboardAuth>)>,
    dashboard_stop: Option<oneshot::Sender<()>>,
}

impl HeadHandle {
    /// Resolves if the head's event loop ends while it should be serving
    /// (a bug: the head never stops by itself). The process should then
    /// exit, so that a supervisor restarts it and its durable log resumes
    /// the work, rather than linger answering "shutting down".
    pub async fn loop_ended(&self) -> String {
        let mut rx = self.loop_ended.clone();
        match rx.wait_for(|w| w.is_some()).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the event loop is gone".to_string(),
        }
    }

    /// An in-process link to this head, for a worker or driver in the same
    /// process (no sockets, no encoding).
    pub fn local_link(&self) -> LocalLink {
        LocalLink(std::sync::Arc::new(InProcessHead { events: self.events.clone(), store: self.store.clone() }))
    }

    /// The dashboard's address, if it serves one.
    pub fn dashboard_addr(&self) -> Option<SocketAddr> {
        self.dashboard.as_ref().map(|(a, _)| *a)
    }

    /// A one-time login link for the dashboard (`host` names the machine
    /// in the link when the dashboard listens on every interface).
    pub fn dashboard_login_url(&self, host: &str) -> Option<String> {
        let (addr, auth) = self.dashboard.as_ref()?;
        Some(login_url(*addr, host, auth))
    }

    /// Current cluster snapshot (same data as the Status RPC).
    pub async fn snapshot(&self) -> Option<ClusterStatus> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Cmd::Status { reply: tx }).ok()?;
        rx.await.ok()
    }

    /// Stops serving: sessions are closed, then the server exits.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.dashboard_stop.take() {
            let _ = tx.send(());
        }
        let _ = self.events.send(Cmd::Stop);
        // Long-lived streams would hold a graceful shutdown forever; give
        // them a moment to see the end of their response streams.
        if tokio::time::timeout(Duration::from_secs(1), &mut self.server).await.is_err() {
            self.server.abort();
        }
    }

    /// Waits until the server stops (on its own or via another handle).
    pub async fn wait(mut self) {
        let _ = (&mut self.server).await;
    }
}

/// Starts a head serving on `listener`.
pub async fn start(config: HeadConfig, listener: tokio::net::TcpListener) -> std::io::Result<HeadHandle> {
    let addr = listener.local_addr()?;
    let store = BinaryStore::open(&config.binaries_dir)?;
    let (events, rx) = mpsc::unbounded_channel();
    let mut core = Core::new(CoreConfig {
        heartbeat_timeout: config.heartbeat_timeout,
        wait_for_feasible_nodes: config.wait_for_feasible_nodes,
        driver_grace: config.driver_grace,
    });
    let mut state = LoopState::new(None, config.compact_after_bytes);
    if let Some(dir) = &config.data_dir {
        let ev = events.clone();
        let (log, replay) = crate::durable::Log::open(dir, move |acks| {
            let _ = ev.send(Cmd::Durable(acks));
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        state = LoopState::new(Some(log), config.compact_after_bytes);
        persistence::restore(&mut core, &mut state, replay, config.heartbeat_timeout);
    }
    let event_loop = tokio::spawn(event_loop::Loop::new(core, state, config.heartbeat_interval, config.admission, config.task_events).run(rx));
    let (ended_tx, loop_ended) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let why = match event_loop.await {
            Ok(()) => "the event loop stopped".to_string(),
            Err(e) => match e.try_into_panic() {
                Ok(p) => format!("the event loop panicked: {}", shoal_domain::panic::message(&*p)),
                Err(e) => format!("the event loop was cancelled: {e}"),
            },
        };
        let _ = ended_tx.send(Some(why));
    });
    let auth = std::sync::Arc::new(dashboard::auth::DashboardAuth::new(config.token.clone()));
    let rpc_errors = std::sync::Arc::new(shoal_proto::rpc_errors::RpcErrors::default());
    let (dashboard, dashboard_stop) = match config.dashboard {
        None => (None, None),
        Some(at) => match tokio::net::TcpListener::bind(at).await {
            Ok(l) => {
                let addr = l.local_addr()?;
                let shared = std::sync::Arc::new(dashboard::Dashboard {
                    events: events.clone(),
                    auth: auth.clone(),
                    metrics: std::sync::Mutex::new(metrics::HeadMetrics::new()),
                    rpc_errors: rpc_errors.clone(),
                });
                let (tx, rx) = oneshot::channel::<()>();
                tokio::spawn(dashboard::serve(l, shared, async {
                    let _ = rx.await;
                }));
                tracing::info!(%addr, "dashboard listening");
                (Some((addr, auth.clone())), Some(tx))
            }
            // The head serves without its dashboard rather than not at all.
            Err(e) => {
                tracing::warn!(%at, error = %e, "could not bind the dashboard (pick another with --dashboard-port); the head runs without it");
                (None, None)
            }
        },
    };
    let service = HeadService { events: events.clone(), store: store.clone(), uploads: Default::default(), dashboard: dashboard.clone() };
    let svc = HeadServer::new(service)
        .max_decoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES);
    let svc = shoal_proto::conns::Guard::new(svc, config.token.as_deref());
    let svc = shoal_proto::rpc_errors::CountErrors::new(svc, rpc_errors.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // With a token, every connection is TLS from the cluster CA the token
    // derives (or the head's own certificate): see `shoal_proto::tls`.
    let tls = if config.token.is_some() || config.tls.is_some() {
        let own = match &config.tls {
            Some(id) => Some(
                shoal_proto::tls::Identity::from_pem(&id.cert_pem, &id.key_pem)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS setup: {e}")))?,
            ),
            None => None,
        };
        let cfg = shoal_proto::tls::server_config(config.token.as_deref(), own.as_ref(), shoal_proto::tls::HEAD_NAME)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("TLS setup: {e}")))?;
        Some(cfg)
    } else {
        None
    };
    let encrypted = tls.is_some();
    let incoming = shoal_proto::net::incoming(listener, tls, config.connections, "head", rpc_errors, None);
    let builder = tonic::transport::Server::builder();
    let server = tokio::spawn(async move {
        let res = builder
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            })
            .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "head server stopped with an error");
        }
    });
    tracing::info!(%addr, token = config.token.is_some(), tls = encrypted, "head listening");
    Ok(HeadHandle { addr, shutdown: Some(stop_tx), server, events, store, loop_ended, dashboard, dashboard_stop })
}

/// `http://HOST:PORT/login?code=...` for a dashboard bound to `addr`.
fn login_url(addr: SocketAddr, host: &str, auth: &dashboard::auth::DashboardAuth) -> String {
    let host = if addr.ip().is_unspecified() { host.to_string() } else { addr.ip().to_string() };
    let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
    if auth.open() {
        return format!("http://{host}:{}/", addr.port());
    }
    format!("http://{host}:{}/login?code={}", addr.port(), auth.login_code(std::time::Instant::now()))
}
