//! The worker's own Prometheus `/metrics` (`shoal_worker_` prefix): what
//! only this node sees (executor processes, tasks in and out, transfers
//! and their bytes, its head sessions and heartbeats) and its object store.
//! Counters are atomics the daemon's shell bumps as it carries out the
//! core's effects; the store's gauges are read at scrape time. Served over
//! HTTP on `--metrics-port`, with the cluster token as a bearer token (no
//! token: open, as the rest of an `--insecure` cluster); the head lists
//! every worker's address for Prometheus discovery.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shoal_store::Store;
use std::sync::Arc;

type Labels = Vec<(String, String)>;

/// The worker's series.
pub(crate) struct WorkerMetrics {
    registry: Registry,
    pub(crate) executors_started: Counter,
    pub(crate) executors_exited: Counter,
    executors: Gauge,
    pub(crate) tasks_received: Counter,
    pub(crate) tasks_finished: Counter,
    pub(crate) tasks_failed: Counter,
    /// Pulls from peers, by outcome.
    pub(crate) transfers: Family<Labels, Counter>,
    pub(crate) transfer_bytes: Counter,
    pub(crate) transfer_seconds: Histogram,
    pub(crate) heartbeats: Counter,
    pub(crate) head_sessions: Counter,
    store: Family<Labels, Gauge>,
    /// What the object store's server refused or answered with an error.
    pub(crate) rpc_errors: Arc<shoal_proto::rpc_errors::RpcErrors>,
    rpc_error_series: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    connections: Family<Labels, Gauge>,
    closed_idle: Counter,
}

impl WorkerMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("shoal_worker");
        let m = WorkerMetrics {
            registry: Registry::default(),
            executors_started: Counter::default(),
            executors_exited: Counter::default(),
            executors: Gauge::default(),
            tasks_received: Counter::default(),
            tasks_finished: Counter::default(),
            tasks_failed: Counter::default(),
            transfers: Family::default(),
            transfer_bytes: Counter::default(),
            transfer_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            heartbeats: Counter::default(),
            head_sessions: Counter::default(),
            store: Family::default(),
            rpc_errors: Default::default(),
            rpc_error_series: Family::default(),
            refused: Family::default(),
            connections: Family::default(),
            closed_idle: Counter::default(),
        };
        registry.register("executors", "Executor processes alive", m.executors.clone());
        registry.register("executors_started", "Executor processes started", m.executors_started.clone());
        registry.register("executors_exited", "Executor processes that exited (ended or died)", m.executors_exited.clone());
        registry.register("tasks_received", "Tasks the head sent here", m.tasks_received.clone());
        registry.register("tasks_finished", "Results with a value reported to the head", m.tasks_finished.clone());
        registry.register("tasks_failed", "Results with a failure reported to the head", m.tasks_failed.clone());
        registry.register(
            "transfers",
            "Objects pulled from peers, by outcome and path (shared_memory: copied from a same-machine peer's mapped store; network: streamed)",
            m.transfers.clone(),
        );
        registry.register("transfer_bytes", "Bytes of objects pulled from peers", m.transfer_bytes.clone());
        registry.register("transfer_seconds", "Time to pull one object from a peer", m.transfer_seconds.clone());
        registry.register("heartbeats", "Heartbeats sent to the head", m.heartbeats.clone());
        registry.register("head_sessions", "Sessions opened with the head (reconnects count)", m.head_sessions.clone());
        registry.register("object_store_bytes", "This node's object store, by kind (capacity, used, pinned, spilled)", m.store.clone());
        registry.register("rpc_errors", "Object-store requests answered with an error status, by method and gRPC code", m.rpc_error_series.clone());
        registry.register("connections_refused", "Object-store connections refused before a request, by reason", m.refused.clone());
        registry.register(
            "connections",
            "Connections the object store's port holds, by state (unauthenticated: no request with the token yet)",
            m.connections.clone(),
        );
        registry.register("connections_closed_idle", "Object-store connections closed after the idle timeout", m.closed_idle.clone());
        for (outcome, path) in [("ok", "network"), ("ok", "shared_memory"), ("failed", "none")] {
            let _ = m.transfers.get_or_create(&vec![("outcome".to_string(), outcome.to_string()), ("path".to_string(), path.to_string())]);
        }
        WorkerMetrics { registry, ..m }
    }

    /// A pull from a peer ended: how, or `None` if it failed.
    pub(crate) fn transferred(&self, bytes: u64, seconds: f64, path: Option<crate::transfer::PullPath>) {
        let (outcome, path) = match path {
            Some(p) => ("ok", p.label()),
            None => ("failed", "none"),
        };
        self.transfers.get_or_create(&vec![("outcome".to_string(), outcome.to_string()), ("path".to_string(), path.to_string())]).inc();
        if outcome == "ok" {
            self.transfer_bytes.inc_by(bytes);
            self.transfer_seconds.observe(seconds);
        }
    }

    fn render(&self, store: &Store) -> String {
        self.executors.set(self.executors_started.get().saturating_sub(self.executors_exited.get()) as i64);
        let u = store.stats();
        for (kind, v) in [("capacity", u.capacity), ("used", u.used), ("pinned", u.pinned_bytes), ("spilled", u.spilled_bytes)] {
            self.store.get_or_create(&vec![("kind".to_string(), kind.to_string())]).set(v as i64);
        }
        let label = |pairs: &[(&str, &str)]| -> Labels { pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        for (method, code, n) in self.rpc_errors.answers() {
            to_total(&self.rpc_error_series.get_or_create(&label(&[("method", &method), ("code", code)])), n);
        }
        for (why, n) in self.rpc_errors.refusals() {
            to_total(&self.refused.get_or_create(&label(&[("reason", why.label())])), n);
        }
        let (unauthenticated, authenticated) = self.rpc_errors.connections();
        self.connections.get_or_create(&label(&[("state", "unauthenticated")])).set(unauthenticated as i64);
        self.connections.get_or_create(&label(&[("state", "authenticated")])).set(authenticated as i64);
        to_total(&self.closed_idle, self.rpc_errors.idle_closes());
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics");
        }
        out
    }
}

/// Brings a counter up to `total` (counters only go up).
fn to_total(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<WorkerMetrics>,
    store: Arc<Store>,
    token: Option<String>,
}

async fn scrape(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(token) = &s.token {
        let given = headers.get_all(header::AUTHORIZATION).iter().filter_map(|v| v.to_str().ok());
        if !shoal_proto::auth::bearer_matches(given, token) {
            return (StatusCode::UNAUTHORIZED, "send the cluster token: Authorization: Bearer <token>").into_response();
        }
    }
    let text = s.metrics.render(&s.store);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// Serves `/metrics` on `listener` for as long as the runtime runs.
pub(crate) fn serve(listener: tokio::net::TcpListener, metrics: Arc<WorkerMetrics>, store: Arc<Store>, token: Option<String>) {
    let app = Router::new().route("/metrics", get(scrape)).with_state(Shared { metrics, store, token });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_series_by_convention_and_counts_what_happened() {
        let m = WorkerMetrics::new();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(1 << 20, 0, dir.path().join("spill")).unwrap();
        m.executors_started.inc_by(3);
        m.executors_exited.inc();
        m.transferred(1000, 0.01, Some(crate::transfer::PullPath::SharedMemory));
        m.transferred(0, 0.0, None);
        let text = m.render(&store);
        assert!(text.contains("shoal_worker_executors 2"), "{text}");
        assert!(text.contains("shoal_worker_transfer_bytes_total 1000"));
        assert!(text.contains("shoal_worker_transfers_total{outcome=\"failed\",path=\"none\"} 1"), "{text}");
        assert!(text.contains("shoal_worker_transfers_total{outcome=\"ok\",path=\"shared_memory\"} 1"));
        assert!(text.contains("shoal_worker_object_store_bytes{kind=\"capacity\"}"));
    }
}
