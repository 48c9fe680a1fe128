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

pub use shoal_domain::state::{FunctionSummary, JobLogs, JobRow, LogLine, ObjectList, ObjectRow, Overview, TaskFilter, TaskList, TaskPhase, TaskRow};

/// Asks the state API and decodes its JSON answer.
async fn state<T: serde::de::DeserializeOwned>(address: &str, token: Option<&str>, req: pb::StateRequest) -> Result<T> {
    let mut client = crate::driver::connect_client(address, token, Duration::from_secs(5)).await?;
    let reply = client.state(req).await.map_err(|s| status_to_error(address, s))?.into_inner();
    serde_json::from_slice(&reply.json)
        .map_err(|e| crate::Error::Refused { address: address.to_string(), message: format!("the head sent a state answer this program cannot read: {e}") })
}

/// Tasks the head tracks that match `filter`, newest first (as `shoal
/// list tasks` shows them).
pub async fn list_tasks(address: &str, token: Option<&str>, filter: &TaskFilter) -> Result<TaskList> {
    let req = pb::StateRequest {
        kind: pb::state_request::Kind::Tasks as i32,
        job: filter.job.unwrap_or(0),
        function: filter.function.clone().unwrap_or_default(),
        state: filter.phase.map(|p| p.as_str().to_string()).unwrap_or_default(),
        node: filter.node.clone().unwrap_or_default(),
        limit: filter.limit,
        id: String::new(),
    };
    state(address, token, req).await
}

/// One task (`shoal get task ID`): an error if the head does not track it.
pub async fn get_task(address: &str, token: Option<&str>, id: &str) -> Result<TaskRow> {
    state(address, token, pb::StateRequest { kind: pb::state_request::Kind::Task as i32, id: id.to_string(), ..Default::default() }).await
}

/// The jobs the head remembers, newest first.
pub async fn list_jobs(address: &str, token: Option<&str>) -> Result<Vec<JobRow>> {
    state(address, token, pb::StateRequest { kind: pb::state_request::Kind::Jobs as i32, ..Default::default() }).await
}

/// Per function: tasks by state, mean and p95 run time (of one job, or all).
pub async fn summary(address: &str, token: Option<&str>, job: Option<u32>) -> Result<Vec<FunctionSummary>> {
    state(address, token, pb::StateRequest { kind: pb::state_request::Kind::Summary as i32, job: job.unwrap_or(0), ..Default::default() }).await
}

/// The largest objects (of one job, or all), at most `limit` (0: 100).
pub async fn list_objects(address: &str, token: Option<&str>, job: Option<u32>, limit: u32) -> Result<ObjectList> {
    state(address, token, pb::StateRequest { kind: pb::state_request::Kind::Objects as i32, job: job.unwrap_or(0), limit, ..Default::default() }).await
}

/// Everything the dashboard shows: nodes, jobs, functions, latest and
/// failed tasks, largest objects, pending demand.
pub async fn overview(address: &str, token: Option<&str>) -> Result<Overview> {
    state(address, token, pb::StateRequest { kind: pb::state_request::Kind::Overview as i32, ..Default::default() }).await
}

/// A one-time login link to the head's dashboard.
pub async fn dashboard_login(address: &str, token: Option<&str>) -> Result<String> {
    let mut client = crate::driver::connect_client(address, token, Duration::from_secs(5)).await?;
    let r = client.dashboard_login(pb::DashboardLoginRequest {}).await.map_err(|s| status_to_error(address, s))?.into_inner();
    let unspecified = r.bind.parse::<std::net::IpAddr>().map_or(true, |ip| ip.is_unspecified());
    let host = if unspecified {
        // The host this program reached the head at.
        let bare = address.trim_start_matches("https://").trim_start_matches("http://");
        bare.rsplit_once(':').map_or(bare, |(h, _)| h).trim_matches(['[', ']']).to_string()
    } else {
        r.bind
    };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    Ok(match r.code.as_str() {
        "" => format!("http://{host}:{}/", r.port),
        code => format!("http://{host}:{}/login?code={code}", r.port),
    })
}

/// What job `job`'s tasks printed (the latest lines the head keeps).
pub async fn job_logs(address: &str, token: Option<&str>, job: u32) -> Result<JobLogs> {
    state(address, token, pb::StateRequest { kind: pb::state_request::Kind::Logs as i32, job, ..Default::default() }).await
}
