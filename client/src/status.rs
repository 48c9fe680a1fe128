//! Cluster status: nodes, their resources and task counts, as `shoal
//! status` prints it and [`cluster_status`](crate::cluster_status) returns it.

use crate::error::{Result, status_to_error};
use shoal_proto::pb;
use std::time::Duration;

pub use shoal_domain::StoreUsage;
pub use shoal_domain::cluster::{ClusterStatus, NodeStatus, TaskCounts};

/// Asks the head at `address` for the cluster status.
pub async fn fetch(address: &str, token: Option<&str>) -> Result<ClusterStatus> {
    let mut client = crate::driver::connect_client(address, token, Duration::from_secs(5)).await?;
    let st = client.status(pb::StatusRequest {}).await.map_err(|s| status_to_error(address, s))?;
    ClusterStatus::try_from(st.into_inner())
        .map_err(|e| crate::Error::Refused { address: address.to_string(), message: format!("the head sent a status this program cannot read: {e}") })
}

/// Drains node `node_id` of the cluster at `address`: no new tasks go to
/// it; it finishes what it holds, then its worker exits.
pub async fn drain(address: &str, token: Option<&str>, node_id: &str) -> Result<()> {
    let mut client = crate::driver::connect_client(address, token, Duration::from_secs(5)).await?;
    client.drain(pb::DrainRequest { node_id: node_id.to_string() }).await.map_err(|s| status_to_error(address, s))?;
    Ok(())
}
