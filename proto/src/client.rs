//! Connecting to a head: one function used by workers, drivers and the CLI,
//! so timeouts, message limits and the token header are the same everywhere.

use crate::auth::AttachToken;
use crate::pb::head_client::HeadClient;
use crate::pb::object_store_client::ObjectStoreClient;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A head client that attaches the cluster token to every call.
pub type Client = HeadClient<InterceptedService<Channel, AttachToken>>;

/// A client of a worker's object store (peers and remote drivers).
pub type StoreClient = ObjectStoreClient<InterceptedService<Channel, AttachToken>>;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address does not parse as `host:port`.
    #[error("invalid address {address:?}: {reason}")]
    BadAddress {
        /// What was given.
        address: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The token cannot be sent.
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    /// TLS cannot be set up, or the handshake failed: what is wrong.
    #[error("TLS to {address}: {problem}")]
    Tls {
        /// Address tried.
        address: String,
        /// What is missing or wrong.
        problem: crate::tls::TlsProblem,
    },
    /// Nothing answered (the head, or a worker's object store).
    #[error("cannot reach {address}: {source}")]
    Unreachable {
        /// Address tried.
        address: String,
        /// Transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Environment variable naming the PEM file of the CA (or self-signed
/// certificate) that a TLS head's certificate must chain to.
pub const ENV_TLS_CA: &str = "SHOAL_TLS_CA";
/// Environment variable overriding the name checked in the head's
/// certificate (default: the host of the address).
pub const ENV_TLS_DOMAIN: &str = "SHOAL_TLS_DOMAIN";

/// Where to find the CA for a head serving its own certificate.
pub fn tls_ca_path() -> Option<std::path::PathBuf> {
    crate::tls::own_ca_path()
}

/// Connects to the head at `address` (`host:port`; an `http://` or
/// `https://` prefix is accepted). With a token the connection is TLS,
/// checked against the CA the token derives (or the one [`tls_ca_path`]
/// names, for a head serving its own certificate); without one it is
/// plain, unless the address says `https://`.
pub async fn connect(address: &str, token: Option<&str>, timeout: Duration) -> Result<Client, ConnectError> {
    let channel = channel(address, token, timeout, true).await?;
    Ok(HeadClient::with_interceptor(channel, AttachToken::new(token)?)
        .max_decoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES))
}

/// Connects to the object store of the worker at `address` (`host:port`).
pub async fn connect_store(address: &str, token: Option<&str>, timeout: Duration) -> Result<StoreClient, ConnectError> {
    let channel = channel(address, token, timeout, false).await?;
    Ok(ObjectStoreClient::with_interceptor(channel, AttachToken::new(token)?)
        .max_decoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES))
}

/// An address as `[scheme://]host:port[/...]`, taken apart.
pub(crate) struct Target<'a> {
    pub(crate) scheme: &'a str,
    pub(crate) authority: &'a str,
    /// As written (an IPv6 host keeps its brackets).
    pub(crate) host: &'a str,
    pub(crate) port: u16,
}

/// Takes `address` apart, or says why it is not one.
pub(crate) fn parse_address(address: &str) -> Result<Target<'_>, ConnectError> {
    let bad = |reason: String| ConnectError::BadAddress { address: address.to_string(), reason };
    let (scheme, rest) = match address.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("", address),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("expected host:port".into()))?;
    let port: u16 = port.parse().map_err(|_| bad(format!("{port:?} is not a port")))?;
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    Ok(Target { scheme, authority, host, port })
}

async fn channel(address: &str, token: Option<&str>, timeout: Duration, head: bool) -> Result<Channel, ConnectError> {
    let bad = |reason: String| ConnectError::BadAddress { address: address.to_string(), reason };
    let Target { scheme, authority, host, port } = parse_address(address)?;
    let tls_err = |problem: crate::tls::TlsProblem| ConnectError::Tls { address: address.to_string(), problem };
    let tls = if token.is_some() || scheme == "https" {
        let host = host.trim_matches(['[', ']']).to_string();
        let peer = if head { crate::tls::Peer::Head { host: host.clone() } } else { crate::tls::Peer::Store };
        let cfg = crate::tls::client_config(token, &peer).map_err(tls_err)?;
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|_| bad("the host is not a name or IP address".into()))?;
        Some((cfg, name))
    } else {
        // No token: plain. A server that answers TLS needs a token; say
        // so rather than fail later with a bare transport error.
        if crate::tls::speaks_tls(host, port, timeout).await {
            return Err(tls_err(crate::tls::TlsProblem::NeedsToken));
        }
        None
    };
    let endpoint = Endpoint::from_shared(format!("http://{authority}")).map_err(|e| bad(e.to_string()))?;
    let failure = std::sync::Arc::new(std::sync::Mutex::new(None));
    let dialer = crate::net::Dialer { host: host.to_string(), port, tls, failure: failure.clone() };
    let endpoint = endpoint
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        // Object transfers stream megabytes: windows large enough that
        // flow control does not stall a loopback or LAN transfer.
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20);
    match endpoint.connect_with_connector(dialer).await {
        Ok(c) => Ok(c),
        Err(source) => {
            let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
            match failed.as_ref().and_then(crate::tls::rustls_error) {
                Some(e) => Err(tls_err(crate::tls::explain(e, if head { tls_ca_path() } else { None }.as_deref()))),
                None => Err(ConnectError::Unreachable { address: address.to_string(), source }),
            }
        }
    }
}

/// Delays between attempts to reach a head again: exponential from
/// `first` up to `max`, with jitter, never giving up (the caller decides
/// when to stop). With jitter, the hundreds of workers and drivers that
/// lose a head at the same moment (a restart) do not come back in
/// lockstep.
pub fn reconnect_delays(first: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default().with_min_delay(first).with_max_delay(max).with_jitter().without_max_times().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_grow_to_the_cap_with_jitter_and_never_end() {
        let d: Vec<Duration> = reconnect_delays(Duration::from_millis(50), Duration::from_secs(2)).take(50).collect();
        assert_eq!(d.len(), 50, "never gives up");
        assert!(d[0] >= Duration::from_millis(50) && d[0] < Duration::from_millis(150), "{:?}", d[0]);
        assert!(d.iter().all(|x| *x <= Duration::from_secs(4)), "capped (jitter adds at most one more delay): {d:?}");
        assert!(d[20..].iter().any(|x| *x >= Duration::from_secs(2)), "reaches the cap: {d:?}");
        let again: Vec<Duration> = reconnect_delays(Duration::from_millis(50), Duration::from_secs(2)).take(50).collect();
        assert_ne!(d, again, "two callers do not retry in lockstep");
    }
}
