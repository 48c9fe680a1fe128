//! The dashboard: a web page the head serves (axum, HTTP on its own port,
//! bound to loopback unless told otherwise), its JSON API (the same
//! answers as `shoal list|get|summary`), a live stream of the overview
//! (server-sent events, one a second), and Prometheus `/metrics`.
//!
//! Every route but the login and the static assets needs a session cookie
//! (from a one-time login code) or the cluster token as a bearer token;
//! nothing here changes the cluster: every route is a read.
//! Assets (`assets/`) are compiled into the binary: clusters are often
//! offline.

pub(crate) mod auth;

use super::cmd::Cmd;
use super::metrics::HeadMetrics;
use super::state::{StateAnswer, StateQuery};
use auth::DashboardAuth;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use shoal_domain::ObjectId;
use shoal_domain::state::{TaskFilter, TaskPhase};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// What the routes share.
pub(crate) struct Dashboard {
    pub(crate) events: mpsc::UnboundedSender<Cmd>,
    pub(crate) auth: Arc<DashboardAuth>,
    pub(crate) metrics: Mutex<HeadMetrics>,
    /// What the head's gRPC server refused or answered with an error.
    pub(crate) rpc_errors: Arc<shoal_proto::rpc_errors::RpcErrors>,
}

impl Dashboard {
    async fn ask(&self, query: StateQuery) -> Option<StateAnswer> {
        let (tx, rx) = oneshot::channel();
        self.events.send(Cmd::State { query, reply: tx }).ok()?;
        rx.await.ok()
    }
}

type Shared = Arc<Dashboard>;

/// The routes: the login and the static assets are open, everything
/// else passes [`require_login`] first.
pub(crate) fn router(shared: Shared) -> Router {
    let guarded = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/api/overview", get(overview))
        .route("/api/events", get(stream))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/jobs", get(jobs))
        .route("/api/summary", get(summary))
        .route("/api/objects", get(objects))
        .route("/api/prometheus-targets", get(targets))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), require_login));
    Router::new()
        .route("/login", get(login))
        .route("/app.js", get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/style.css", get(|| async { asset(STYLE, "text/css; charset=utf-8") }))
        .merge(guarded)
        .with_state(shared)
}

/// Lets a request through with a live session cookie or the cluster
/// token as a bearer token; refuses it otherwise.
async fn require_login(State(d): State<Shared>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !d.auth.allows(request.headers(), Instant::now()) {
        return refused();
    }
    next.run(request).await
}

/// Serves the dashboard on `listener` until `stop` resolves.
pub(crate) async fn serve(listener: tokio::net::TcpListener, shared: Shared, stop: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Err(e) = axum::serve(listener, router(shared)).with_graceful_shutdown(stop).await {
        tracing::warn!(error = %e, "the dashboard stopped");
    }
}

fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    secure(([(header::CONTENT_TYPE, kind)], body).into_response())
}

fn refused() -> Response {
    let page = "<!doctype html><meta charset=utf-8><title>Shoal: log in</title>\
        <body style=\"font-family:sans-serif;margin:3em\"><h1>Log in to the Shoal dashboard</h1>\
        <p>This page needs a login link. On a machine that has the cluster token, run</p>\
        <pre>shoal dashboard</pre><p>and open the link it prints (each link works once, for 15 minutes).</p>\
        <p>Scrapers send the cluster token: <code>Authorization: Bearer &lt;token&gt;</code>.</p></body>";
    secure((StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

fn json(answer: Option<StateAnswer>) -> Response {
    match answer {
        Some(a) => secure(([(header::CONTENT_TYPE, "application/json")], a.to_json()).into_response()),
        None => (StatusCode::SERVICE_UNAVAILABLE, "the head is shutting down").into_response(),
    }
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

#[derive(serde::Deserialize)]
struct LoginParams {
    code: Option<String>,
}

async fn login(State(d): State<Shared>, Query(p): Query<LoginParams>) -> Response {
    let Some(session) = p.code.as_deref().and_then(|c| d.auth.redeem(c, Instant::now())) else {
        tracing::info!("a dashboard login with an unknown, used or expired code was refused");
        return refused();
    };
    let cookie = format!("{}={session}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}", auth::COOKIE, auth::SESSION_LIFETIME.as_secs());
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    secure(r)
}

async fn metrics(State(d): State<Shared>) -> Response {
    let Some(StateAnswer::Metrics(snap)) = d.ask(StateQuery::Metrics).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the head is shutting down").into_response();
    };
    let text = {
        let m = d.metrics.lock().unwrap_or_else(|e| e.into_inner());
        m.update(&snap);
        m.update_rpc(&d.rpc_errors);
        m.render()
    };
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// Every alive worker's `/metrics`, in the format of Prometheus's
/// `http_sd_configs`, so one scrape config finds the whole cluster.
async fn targets(State(d): State<Shared>) -> Response {
    let (tx, rx) = oneshot::channel();
    if d.events.send(Cmd::Status { reply: tx }).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the head is shutting down").into_response();
    }
    let Ok(st) = rx.await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the head is shutting down").into_response();
    };
    let groups: Vec<serde_json::Value> = st
        .nodes
        .iter()
        .filter(|n| n.alive && !n.metrics_address.is_empty())
        .map(|n| serde_json::json!({"targets": [n.metrics_address], "labels": {"node": format!("{:#}", n.id), "hostname": n.hostname}}))
        .collect();
    secure(([(header::CONTENT_TYPE, "application/json")], serde_json::Value::Array(groups).to_string()).into_response())
}

async fn overview(State(d): State<Shared>) -> Response {
    json(d.ask(StateQuery::Overview).await)
}

async fn stream(State(d): State<Shared>) -> Response {
    let events = futures::stream::unfold((d, true), |(d, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let answer = d.ask(StateQuery::Overview).await?;
        let data = String::from_utf8_lossy(&answer.to_json()).into_owned();
        Some((Ok::<_, std::convert::Infallible>(Event::default().event("overview").data(data)), (d, false)))
    });
    secure(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[derive(serde::Deserialize, Default)]
struct TaskParams {
    job: Option<u32>,
    function: Option<String>,
    state: Option<String>,
    node: Option<String>,
    limit: Option<u32>,
}

async fn tasks(State(d): State<Shared>, Query(p): Query<TaskParams>) -> Response {
    let phase = match p.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match TaskPhase::parse(s) {
            Some(p) => Some(p),
            None => return (StatusCode::BAD_REQUEST, format!("unknown state {s:?}: pending, running, finished or failed")).into_response(),
        },
    };
    let filter =
        TaskFilter { job: p.job, function: p.function.filter(|f| !f.is_empty()), phase, node: p.node.filter(|n| !n.is_empty()), limit: p.limit.unwrap_or(0) };
    json(d.ask(StateQuery::Tasks(filter)).await)
}

async fn task(State(d): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(id) = ObjectId::parse(&id) else {
        return (StatusCode::BAD_REQUEST, format!("{id:?} is not a task id (job.seq, e.g. 3.17)")).into_response();
    };
    match d.ask(StateQuery::Task(id)).await {
        Some(StateAnswer::Task(None)) => {
            (StatusCode::NOT_FOUND, format!("task {id} is not tracked (unknown, or dropped from the bounded store)")).into_response()
        }
        other => json(other),
    }
}

async fn jobs(State(d): State<Shared>) -> Response {
    json(d.ask(StateQuery::Jobs).await)
}

#[derive(serde::Deserialize, Default)]
struct JobParam {
    job: Option<u32>,
    limit: Option<usize>,
}

async fn summary(State(d): State<Shared>, Query(p): Query<JobParam>) -> Response {
    json(d.ask(StateQuery::Summary(p.job)).await)
}

async fn objects(State(d): State<Shared>, Query(p): Query<JobParam>) -> Response {
    json(d.ask(StateQuery::Objects { job: p.job, limit: p.limit.unwrap_or(0) }).await)
}
