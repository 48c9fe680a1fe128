//! The cluster token. Every RPC carries `authorization: Bearer <token>`;
//! the head compares it in constant time and refuses anything else with
//! `Unauthenticated`. Secure by default: a head only runs without a token
//! when started with `--insecure`.

use subtle::ConstantTimeEq;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Metadata key carrying the token.
pub const HEADER: &str = "authorization";

/// Generates a fresh random token (32 bytes of OS randomness, hex).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(buf)).expect("reading /dev/urandom");
}

/// Whether `given` equals `expected`, compared in constant time.
pub fn secrets_match(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Whether any of these HTTP `Authorization` header values is
/// `Bearer <token>` (the dashboard's and the workers' `/metrics` gate).
pub fn bearer_matches<'a>(authorization: impl IntoIterator<Item = &'a str>, token: &str) -> bool {
    authorization.into_iter().filter_map(|v| v.strip_prefix("Bearer ")).any(|t| secrets_match(t.trim(), token.trim()))
}

/// Client side: attaches the token (if any) to every request.
#[derive(Clone)]
pub struct AttachToken {
    value: Option<MetadataValue<Ascii>>,
}

/// Errors building a client token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token has characters that cannot go in an HTTP header.
    #[error("the cluster token contains characters not allowed in a header")]
    InvalidCharacters,
}

impl AttachToken {
    /// Attaches `token` (or nothing when `None`, for `--insecure` heads).
    pub fn new(token: Option<&str>) -> Result<Self, TokenError> {
        let value = match token {
            Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| TokenError::InvalidCharacters)?),
            None => None,
        };
        Ok(Self { value })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            req.metadata_mut().insert(HEADER, v.clone());
        }
        Ok(req)
    }
}

/// Server side: checks the token on every request.
#[derive(Clone)]
pub struct CheckToken {
    expected: Option<std::sync::Arc<Vec<u8>>>,
}

impl CheckToken {
    /// Expects `token`; `None` accepts every request (insecure mode).
    pub fn new(token: Option<&str>) -> Self {
        Self { expected: token.map(|t| std::sync::Arc::new(format!("Bearer {}", t.trim()).into_bytes())) }
    }

    /// Whether an `authorization` header value carries the token; the
    /// `Unauthenticated` status to answer with if not.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), Status> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        match header {
            None => Err(Status::unauthenticated("missing cluster token: pass --token/--token-file or set SHOAL_TOKEN")),
            // Constant-time on equal lengths; the length itself is not secret.
            Some(given) if given.len() == expected.len() && bool::from(given.ct_eq(expected.as_slice())) => Ok(()),
            Some(_) => Err(Status::unauthenticated("wrong cluster token")),
        }
    }
}

impl Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.check(req.metadata().get(HEADER).map(|v| v.as_bytes()))?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(v: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(v) = v {
            r.metadata_mut().insert(HEADER, v.parse().unwrap());
        }
        r
    }

    #[test]
    fn accepts_only_the_right_token() {
        let mut check = CheckToken::new(Some("abc"));
        assert!(check.call(with_header(Some("Bearer abc"))).is_ok());
        let e = check.call(with_header(Some("Bearer abd"))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = check.call(with_header(None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("missing"));
        assert!(check.call(with_header(Some("Bearer abcd"))).is_err());
    }

    #[test]
    fn attach_then_check_round_trips() {
        let token = generate_token();
        assert_eq!(token.len(), 64);
        let mut attach = AttachToken::new(Some(&token)).unwrap();
        let req = attach.call(Request::new(())).unwrap();
        assert!(CheckToken::new(Some(&token)).call(req).is_ok());
    }

    #[test]
    fn insecure_mode_accepts_anything() {
        assert!(CheckToken::new(None).call(with_header(None)).is_ok());
    }
}
