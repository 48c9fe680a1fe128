//! Connecting to a head: one function used by workers, drivers and the CLI,
//! so timeouts, message limits and the token header are the same everywhere.

use crate::auth::AttachToken;
use crate::pb::head_client::HeadClient;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A head client that attaches the cluster token to every call.
pub type Client = HeadClient<InterceptedService<Channel, AttachToken>>;

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address does not parse as `host:port`.
    #[error("invalid head address {address:?}: {reason}")]
    BadAddress {
        /// What was given.
        address: String,
        /// Why it is wrong.
        reason: String,
    },
    /// The token cannot be sent.
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    /// Nothing answered.
    #[error("cannot reach the head at {address}: {source}")]
    Unreachable {
        /// Address tried.
        address: String,
        /// Transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// Connects to the head at `address` (`host:port`, or a full `http://` URL).
pub async fn connect(address: &str, token: Option<&str>, timeout: Duration) -> Result<Client, ConnectError> {
    let url = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|e| ConnectError::BadAddress { address: address.to_string(), reason: e.to_string() })?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await.map_err(|source| ConnectError::Unreachable { address: address.to_string(), source })?;
    Ok(HeadClient::with_interceptor(channel, AttachToken::new(token)?)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES))
}
