//! Who may read the dashboard: a browser that redeemed a one-time login
//! code (printed by `shoal start --head` and `shoal dashboard`, which hold
//! the token) gets a session cookie; a scraper sends the cluster token as
//! a bearer token. Without a cluster token (`--insecure`) it is open, as
//! the rest of such a cluster is.

use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login code may wait to be used.
pub(crate) const CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// How long a browser session lasts.
pub(crate) const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Codes waiting at once (the oldest goes first).
const MAX_CODES: usize = 256;
/// Sessions at once (the oldest goes first).
const MAX_SESSIONS: usize = 1024;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "shoal_session";

#[derive(Default)]
struct State {
    codes: HashMap<String, Instant>,
    sessions: HashMap<String, Instant>,
}

/// The dashboard's gate; see the module doc.
pub(crate) struct DashboardAuth {
    token: Option<String>,
    state: Mutex<State>,
}

fn secret() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// Drops expired entries, then the oldest while over `max`.
fn prune(m: &mut HashMap<String, Instant>, lifetime: Duration, max: usize, now: Instant) {
    m.retain(|_, made| now.saturating_duration_since(*made) < lifetime);
    while m.len() >= max {
        let Some(oldest) = m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else { break };
        m.remove(&oldest);
    }
}

impl DashboardAuth {
    /// A gate for a cluster with `token` (`None`: open).
    pub(crate) fn new(token: Option<String>) -> Self {
        DashboardAuth { token, state: Mutex::new(State::default()) }
    }

    /// Anyone may read (no cluster token).
    pub(crate) fn open(&self) -> bool {
        self.token.is_none()
    }

    /// A new one-time login code.
    pub(crate) fn login_code(&self, now: Instant) -> String {
        let code = secret();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        prune(&mut s.codes, CODE_LIFETIME, MAX_CODES, now);
        s.codes.insert(code.clone(), now);
        code
    }

    /// Trades a login code (once) for a session id.
    pub(crate) fn redeem(&self, code: &str, now: Instant) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let made = s.codes.remove(code)?;
        if now.saturating_duration_since(made) >= CODE_LIFETIME {
            return None;
        }
        prune(&mut s.sessions, SESSION_LIFETIME, MAX_SESSIONS, now);
        let session = secret();
        s.sessions.insert(session.clone(), now);
        Some(session)
    }

    /// The request carries a live session cookie or the cluster token.
    pub(crate) fn allows(&self, headers: &HeaderMap, now: Instant) -> bool {
        let Some(token) = &self.token else { return true };
        let bearer = headers.get_all(axum::http::header::AUTHORIZATION).iter().filter_map(|v| v.to_str().ok());
        if shoal_proto::auth::bearer_matches(bearer, token) {
            return true;
        }
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        cookies(headers).any(|v| s.sessions.get(v).is_some_and(|made| now.saturating_duration_since(*made) < SESSION_LIFETIME))
    }
}

/// The values of our cookie in the request.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: axum::http::HeaderName, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_code_works_once_and_its_session_opens_the_door() {
        let auth = DashboardAuth::new(Some("tok".into()));
        let now = Instant::now();
        let code = auth.login_code(now);
        let session = auth.redeem(&code, now).unwrap();
        assert!(auth.redeem(&code, now).is_none(), "a code is single-use");
        assert!(auth.allows(&with(axum::http::header::COOKIE, &format!("a=b; {COOKIE}={session}")), now));
        assert!(!auth.allows(&with(axum::http::header::COOKIE, &format!("{COOKIE}=forged")), now));
        assert!(!auth.allows(&HeaderMap::new(), now), "nothing: refused");
        assert!(!auth.allows(&with(axum::http::header::COOKIE, &format!("{COOKIE}={session}")), now + SESSION_LIFETIME), "sessions expire");
    }

    #[test]
    fn the_token_as_bearer_works_and_a_wrong_one_does_not() {
        let auth = DashboardAuth::new(Some("tok".into()));
        let now = Instant::now();
        assert!(auth.allows(&with(axum::http::header::AUTHORIZATION, "Bearer tok"), now));
        assert!(!auth.allows(&with(axum::http::header::AUTHORIZATION, "Bearer tik"), now));
        assert!(!auth.allows(&with(axum::http::header::AUTHORIZATION, "tok"), now));
    }

    #[test]
    fn an_expired_code_is_refused_and_codes_stay_bounded() {
        let auth = DashboardAuth::new(Some("tok".into()));
        let now = Instant::now();
        let code = auth.login_code(now);
        assert!(auth.redeem(&code, now + CODE_LIFETIME).is_none());
        for _ in 0..1000 {
            auth.login_code(now);
        }
        assert!(auth.state.lock().unwrap().codes.len() <= MAX_CODES);
    }

    #[test]
    fn without_a_token_it_is_open() {
        let auth = DashboardAuth::new(None);
        assert!(auth.open() && auth.allows(&HeaderMap::new(), Instant::now()));
    }
}
