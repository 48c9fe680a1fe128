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
    /// TLS was asked for (an `https://` address) but cannot be set up.
    #[error("TLS to {address}: {reason}")]
    Tls {
        /// Address tried.
        address: String,
        /// What is missing or wrong.
        reason: String,
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

/// Where to find the CA for TLS: `SHOAL_TLS_CA`, else `tls-ca.pem` in the
/// session dir (a TLS head writes its certificate there for local clients).
pub fn tls_ca_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(ENV_TLS_CA).filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    Some(shoal_domain::paths::session_home().join("tls-ca.pem")).filter(|p| p.is_file())
}

/// Connects to the head at `address`: `host:port` or `http://host:port`
/// for plain gRPC, `https://host:port` for TLS (the head's certificate is
/// checked against [`tls_ca_path`]).
pub async fn connect(address: &str, token: Option<&str>, timeout: Duration) -> Result<Client, ConnectError> {
    let channel = channel(address, timeout).await?;
    Ok(HeadClient::with_interceptor(channel, AttachToken::new(token)?)
        .max_decoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES))
}

/// Connects to the object store of the worker at `address` (`host:port`).
pub async fn connect_store(address: &str, token: Option<&str>, timeout: Duration) -> Result<StoreClient, ConnectError> {
    let channel = channel(address, timeout).await?;
    Ok(ObjectStoreClient::with_interceptor(channel, AttachToken::new(token)?)
        .max_decoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(shoal_domain::limits::MAX_MESSAGE_BYTES))
}

async fn channel(address: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let mut endpoint = Endpoint::from_shared(url.clone()).map_err(|e| ConnectError::BadAddress { address: address.to_string(), reason: e.to_string() })?;
    if let Some(rest) = url.strip_prefix("https://") {
        let tls_err = |reason: String| ConnectError::Tls { address: address.to_string(), reason };
        let ca = tls_ca_path().ok_or_else(|| tls_err(format!("an https:// address needs the head's CA certificate: set {ENV_TLS_CA} or pass --tls-ca")))?;
        let pem = std::fs::read(&ca).map_err(|e| tls_err(format!("reading {}: {e}", ca.display())))?;
        let host = rest.split(['/', ':']).next().unwrap_or_default().trim_matches(['[', ']']).to_string();
        let domain = std::env::var(ENV_TLS_DOMAIN).ok().filter(|d| !d.is_empty()).unwrap_or(host);
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)).domain_name(domain);
        endpoint = endpoint.tls_config(tls).map_err(|e| tls_err(e.to_string()))?;
    }
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
    endpoint.connect().await.map_err(|source| ConnectError::Unreachable { address: address.to_string(), source })
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
