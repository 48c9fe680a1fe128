//! What a server refused or answered with an error, counted for
//! `/metrics`: connections refused before they were authenticated (by
//! reason) and requests answered with a non-OK gRPC status (by method and
//! code), connections closed idle, and the connections held.
//! [`CountErrors`] wraps a tonic service (outside the token check, so
//! refused tokens count too); [`crate::net::incoming`] and
//! [`crate::conns`] count the connections.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Why a connection was refused before any request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its TLS certificate (or trust) does not come from the cluster's
    /// token: a wrong token.
    WrongToken,
    /// Its TLS handshake failed otherwise (not a Shoal client).
    Handshake,
    /// It did not finish its handshake within the deadline.
    Timeout,
    /// Dropped to make room: too many connections without an
    /// authenticated request were open.
    Evicted,
    /// It sent no authenticated request within the deadline.
    NoRequest,
    /// Over the bound on authenticated connections (per peer or total).
    TooMany,
}

impl Refusal {
    /// Every reason, in the order of [`Refusal::label`]s.
    pub const ALL: [Refusal; 6] = [Refusal::WrongToken, Refusal::Handshake, Refusal::Timeout, Refusal::Evicted, Refusal::NoRequest, Refusal::TooMany];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::WrongToken => "wrong_token",
            Refusal::Handshake => "handshake_failed",
            Refusal::Timeout => "handshake_timeout",
            Refusal::Evicted => "too_many_unauthenticated",
            Refusal::NoRequest => "no_request",
            Refusal::TooMany => "too_many_connections",
        }
    }
}

/// Distinct (method, code) pairs kept; past it errors count under
/// method "other" (a client can send requests to any path).
const MAX_KEYS: usize = 128;

/// A server's refusals and error answers since it started.
#[derive(Debug, Default)]
pub struct RpcErrors {
    refused: [AtomicU64; 6],
    answered: Mutex<BTreeMap<(String, i32), u64>>,
    closed_idle: AtomicU64,
    unauthenticated: AtomicU64,
    authenticated: AtomicU64,
}

impl RpcErrors {
    /// Counts one refused connection.
    pub fn refused(&self, why: Refusal) {
        if let Some(c) = self.refused.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refused connections so far, by reason.
    pub fn refusals(&self) -> Vec<(Refusal, u64)> {
        Refusal::ALL.iter().map(|r| (*r, self.refused.get(*r as usize).map_or(0, |c| c.load(Ordering::Relaxed)))).collect()
    }

    /// Counts a connection closed for being idle.
    pub fn closed_idle(&self) {
        self.closed_idle.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed for being idle so far.
    pub fn idle_closes(&self) -> u64 {
        self.closed_idle.load(Ordering::Relaxed)
    }

    /// Records the connections held now: without and with an
    /// authenticated request.
    pub fn set_connections(&self, unauthenticated: usize, authenticated: usize) {
        self.unauthenticated.store(unauthenticated as u64, Ordering::Relaxed);
        self.authenticated.store(authenticated as u64, Ordering::Relaxed);
    }

    /// (unauthenticated, authenticated) connections held, as of the last
    /// sweep (four a second).
    pub fn connections(&self) -> (u64, u64) {
        (self.unauthenticated.load(Ordering::Relaxed), self.authenticated.load(Ordering::Relaxed))
    }

    /// Counts a request to `path` answered with gRPC status `code` (not 0).
    pub fn answered(&self, path: &str, code: i32) {
        // "/shoal.v1.Head/DriverSession" -> "DriverSession".
        let method = path.rsplit('/').next().filter(|m| !m.is_empty() && m.len() <= 64).unwrap_or("other");
        let mut m = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        let key = (method.to_string(), code);
        if m.len() >= MAX_KEYS && !m.contains_key(&key) {
            *m.entry(("other".to_string(), code)).or_default() += 1;
        } else {
            *m.entry(key).or_default() += 1;
        }
    }

    /// Error answers so far: (method, gRPC code name, count).
    pub fn answers(&self) -> Vec<(String, &'static str, u64)> {
        let m = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|((method, code), n)| (method.clone(), code_name(*code), *n)).collect()
    }
}

/// The name of a gRPC status code, as the `code` label.
fn code_name(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::Unknown => "unknown",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::OutOfRange => "out_of_range",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::Internal => "internal",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DataLoss => "data_loss",
        tonic::Code::Unauthenticated => "unauthenticated",
    }
}

/// A tonic service that counts the error statuses it answers with (those
/// a handler or an interceptor returns before any message; an error in
/// the middle of a stream ends that stream and is logged where it happens).
#[derive(Clone)]
pub struct CountErrors<S> {
    inner: S,
    errors: Arc<RpcErrors>,
}

impl<S> CountErrors<S> {
    /// Wraps `inner`, counting into `errors`.
    pub fn new(inner: S, errors: Arc<RpcErrors>) -> Self {
        Self { inner, errors }
    }
}

impl<S, B, R> tower_service::Service<http::Request<B>> for CountErrors<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let uri = req.uri().clone();
        let errors = self.errors.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await?;
            let code = r.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
            if let Some(code) = code.filter(|c| *c != 0) {
                errors.answered(uri.path(), code);
            }
            Ok(r)
        })
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for CountErrors<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_count_by_method_and_code_and_unknown_paths_stay_bounded() {
        let e = RpcErrors::default();
        e.answered("/shoal.v1.Head/DriverSession", 16);
        e.answered("/shoal.v1.Head/DriverSession", 16);
        e.answered("/shoal.v1.Head/State", 3);
        for i in 0..1000 {
            e.answered(&format!("/x/{i}"), 12);
        }
        let a = e.answers();
        assert!(a.contains(&("DriverSession".into(), "unauthenticated", 2)));
        assert!(a.contains(&("State".into(), "invalid_argument", 1)));
        assert!(a.len() <= MAX_KEYS + 1);
        assert_eq!(a.iter().map(|x| x.2).sum::<u64>(), 1003);
        e.refused(Refusal::Timeout);
        assert_eq!(e.refusals()[2], (Refusal::Timeout, 1));
    }
}
