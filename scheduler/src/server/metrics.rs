//! The head's Prometheus metrics (`/metrics` on the dashboard port),
//! named by Prometheus conventions (`shoal_` prefix, `_total` counters,
//! base units). Every series is read from one [`MetricsSnapshot`] the loop
//! takes at scrape time, so nothing on the task path touches a metric;
//! per-node series cover what each worker reports in its heartbeats
//! (store use, spills, running tasks, resources).

use super::state::MetricsSnapshot;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

/// The dispatch-latency histogram as the loop keeps it (buckets counted
/// there, on the task path, with no atomics or locks); a scrape copies it
/// in and encodes it.
#[derive(Clone, Debug, Default)]
struct LatencyHistogram(std::sync::Arc<std::sync::Mutex<crate::events::Latencies>>);

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let l = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = crate::events::LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(l.counts)
            .map(|(bound, n)| {
                cumulative += n;
                (bound, cumulative)
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(l.sum, l.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
type FGauge = Gauge<f64, AtomicU64>;

/// The head's metric families, registered once.
pub(crate) struct HeadMetrics {
    registry: Registry,
    tasks: Family<Labels, Gauge>,
    submitted: Counter,
    dispatched: Counter,
    retried: Counter,
    finished: Counter,
    failed: Counter,
    waiting_for_node: Gauge,
    dispatch_latency: LatencyHistogram,
    nodes: Family<Labels, Gauge>,
    node_resources: Family<Labels, FGauge>,
    node_available: Family<Labels, FGauge>,
    node_running: Family<Labels, Gauge>,
    node_heartbeat_age: Family<Labels, FGauge>,
    store_capacity: Family<Labels, Gauge>,
    store_used: Family<Labels, Gauge>,
    store_pinned: Family<Labels, Gauge>,
    store_objects: Family<Labels, Gauge>,
    spilled_bytes: Family<Labels, Gauge>,
    spilled_objects: Family<Labels, Gauge>,
    jobs: Family<Labels, Gauge>,
    objects: Gauge,
    actors: Family<Labels, Gauge>,
    events_tracked: Gauge,
    events_dropped: Counter,
    rpc_errors: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    connections: Family<Labels, Gauge>,
    closed_idle: Counter,
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Brings a counter up to `total` (counters only go up).
fn to_total(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl HeadMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("shoal");
        let m = HeadMetrics {
            tasks: Family::default(),
            submitted: Counter::default(),
            dispatched: Counter::default(),
            retried: Counter::default(),
            finished: Counter::default(),
            failed: Counter::default(),
            waiting_for_node: Gauge::default(),
            dispatch_latency: LatencyHistogram::default(),
            nodes: Family::default(),
            node_resources: Family::default(),
            node_available: Family::default(),
            node_running: Family::default(),
            node_heartbeat_age: Family::default(),
            store_capacity: Family::default(),
            store_used: Family::default(),
            store_pinned: Family::default(),
            store_objects: Family::default(),
            spilled_bytes: Family::default(),
            spilled_objects: Family::default(),
            jobs: Family::default(),
            objects: Gauge::default(),
            actors: Family::default(),
            events_tracked: Gauge::default(),
            events_dropped: Counter::default(),
            rpc_errors: Family::default(),
            refused: Family::default(),
            connections: Family::default(),
            closed_idle: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("tasks", "Unfinished tasks by state (pending: waiting for inputs or a node; running: on a node)", m.tasks.clone());
        registry.register("tasks_submitted", "Tasks accepted by the head", m.submitted.clone());
        registry.register("tasks_dispatched", "Sends of a task to a node (one per attempt)", m.dispatched.clone());
        registry.register("tasks_retried", "Tasks put back in line after their node or executor died", m.retried.clone());
        registry.register("tasks_finished", "Tasks done with a value", m.finished.clone());
        registry.register("tasks_failed", "Tasks done with a failure (cancellations included)", m.failed.clone());
        registry.register("tasks_waiting_for_node", "Ready tasks no node has room for now", m.waiting_for_node.clone());
        registry.register("task_dispatch_latency_seconds", "From a task's arrival at the head to its first send to a node", m.dispatch_latency.clone());
        registry.register("nodes", "Nodes by state", m.nodes.clone());
        registry.register("node_resources", "Resources a node offers", m.node_resources.clone());
        registry.register("node_resources_available", "Resources of a node not in use", m.node_available.clone());
        registry.register("node_tasks_running", "Tasks sent to a node and not done", m.node_running.clone());
        registry.register("node_heartbeat_age_seconds", "Time since a node's last heartbeat", m.node_heartbeat_age.clone());
        registry.register("object_store_capacity_bytes", "Size of a node's object store", m.store_capacity.clone());
        registry.register("object_store_used_bytes", "Bytes of sealed and in-progress objects in a node's store", m.store_used.clone());
        registry.register("object_store_pinned_bytes", "Bytes of objects pinned by readers", m.store_pinned.clone());
        registry.register("object_store_objects", "Objects in a node's store", m.store_objects.clone());
        registry.register("object_store_spilled_bytes", "Bytes a node spilled to disk", m.spilled_bytes.clone());
        registry.register("object_store_spilled_objects", "Objects a node spilled to disk", m.spilled_objects.clone());
        registry.register("jobs", "Jobs the head remembers, by state", m.jobs.clone());
        registry.register("objects", "Entries in the head's object table", m.objects.clone());
        registry.register("actors", "Actors by state", m.actors.clone());
        registry.register("task_events_tracked", "Task rows kept for the state API", m.events_tracked.clone());
        registry.register("task_events_dropped", "Task rows dropped from the bounded store", m.events_dropped.clone());
        registry.register("rpc_errors", "Requests the head answered with an error status, by method and gRPC code", m.rpc_errors.clone());
        registry.register("connections_refused", "Connections the head refused before a request, by reason", m.refused.clone());
        registry.register("connections", "Connections the head's port holds, by state (unauthenticated: no request with the token yet)", m.connections.clone());
        registry.register("connections_closed_idle", "Connections the head closed after its idle timeout", m.closed_idle.clone());
        HeadMetrics { registry, ..m }
    }

    /// Sets every series from `s`.
    pub(crate) fn update(&self, s: &MetricsSnapshot) {
        let t = &s.status.tasks;
        self.tasks.get_or_create(&l(&[("state", "pending")])).set(t.queued as i64);
        self.tasks.get_or_create(&l(&[("state", "running")])).set(t.running as i64);
        to_total(&self.submitted, s.totals.submitted);
        to_total(&self.dispatched, s.totals.dispatched);
        to_total(&self.retried, s.totals.requeued);
        to_total(&self.finished, s.totals.finished);
        to_total(&self.failed, s.totals.failed);
        self.waiting_for_node.set(s.ready_queue as i64);
        *self.dispatch_latency.0.lock().unwrap_or_else(|e| e.into_inner()) = s.latencies.clone();
        // Per-node series: dead nodes' series go (a node id is a label).
        for f in
            [&self.node_running, &self.store_capacity, &self.store_used, &self.store_pinned, &self.store_objects, &self.spilled_bytes, &self.spilled_objects]
        {
            f.clear();
        }
        self.node_resources.clear();
        self.node_available.clear();
        self.node_heartbeat_age.clear();
        let (mut alive, mut dead, mut draining) = (0, 0, 0);
        for n in &s.status.nodes {
            match (n.alive, n.draining) {
                (false, _) => dead += 1,
                (true, true) => draining += 1,
                (true, false) => alive += 1,
            }
            if !n.alive {
                continue;
            }
            let id = format!("{:#}", n.id);
            let node = l(&[("node", &id), ("hostname", &n.hostname)]);
            self.node_running.get_or_create(&node).set(n.tasks_running as i64);
            self.node_heartbeat_age.get_or_create(&node).set(n.last_heartbeat_age_s);
            let resource = |f: &Family<Labels, FGauge>, name: &str, v: f64| {
                let mut labels = node.clone();
                labels.push(("resource".into(), name.into()));
                f.get_or_create(&labels).set(v);
            };
            resource(&self.node_resources, "cpus", n.resources.cpus);
            resource(&self.node_available, "cpus", n.available.cpus);
            for (name, v) in &n.resources.custom {
                resource(&self.node_resources, name, *v);
            }
            for (name, v) in &n.available.custom {
                resource(&self.node_available, name, *v);
            }
            let u = &n.store;
            // Known from registration, before the first heartbeat says it.
            self.store_capacity.get_or_create(&node).set(u.capacity.max(n.object_store_bytes) as i64);
            self.store_used.get_or_create(&node).set(u.used as i64);
            self.store_pinned.get_or_create(&node).set(u.pinned_bytes as i64);
            self.store_objects.get_or_create(&node).set(u.objects as i64);
            self.spilled_bytes.get_or_create(&node).set(u.spilled_bytes as i64);
            self.spilled_objects.get_or_create(&node).set(u.spilled_objects as i64);
        }
        self.nodes.get_or_create(&l(&[("state", "alive")])).set(alive);
        self.nodes.get_or_create(&l(&[("state", "draining")])).set(draining);
        self.nodes.get_or_create(&l(&[("state", "dead")])).set(dead);
        let ended = s.jobs.iter().filter(|j| j.ended_at_us.is_some()).count() as i64;
        self.jobs.get_or_create(&l(&[("state", "running")])).set(s.jobs.len() as i64 - ended);
        self.jobs.get_or_create(&l(&[("state", "ended")])).set(ended);
        self.objects.set(s.objects as i64);
        for state in ["pending", "alive", "dead"] {
            let n = s.status.actors.iter().filter(|a| a.state.to_string() == state).count();
            self.actors.get_or_create(&l(&[("state", state)])).set(n as i64);
        }
        self.events_tracked.set(s.tracked as i64);
        to_total(&self.events_dropped, s.totals.dropped);
    }

    /// Sets the RPC error series from the server's counters.
    pub(crate) fn update_rpc(&self, e: &shoal_proto::rpc_errors::RpcErrors) {
        for (method, code, n) in e.answers() {
            to_total(&self.rpc_errors.get_or_create(&l(&[("method", &method), ("code", code)])), n);
        }
        for (why, n) in e.refusals() {
            to_total(&self.refused.get_or_create(&l(&[("reason", why.label())])), n);
        }
        let (unauthenticated, authenticated) = e.connections();
        self.connections.get_or_create(&l(&[("state", "unauthenticated")])).set(unauthenticated as i64);
        self.connections.get_or_create(&l(&[("state", "authenticated")])).set(authenticated as i64);
        to_total(&self.closed_idle, e.idle_closes());
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Totals;
    use shoal_domain::cluster::ClusterStatus;

    #[test]
    fn counters_follow_the_totals_and_the_text_names_them_by_convention() {
        let m = HeadMetrics::new();
        let mut s = MetricsSnapshot {
            status: ClusterStatus { nodes: vec![], tasks: Default::default(), jobs: 0, version: "x".into(), actors: vec![] },
            totals: Totals { submitted: 10, finished: 7, failed: 1, ..Default::default() },
            ready_queue: 2,
            objects: 3,
            jobs: vec![],
            tracked: 10,
            latencies: crate::events::Latencies {
                counts: {
                    let mut c = [0; 21];
                    c[0] = 1;
                    c[5] = 1;
                    c
                },
                sum: 0.0021,
                count: 2,
            },
        };
        m.update(&s);
        s.totals.submitted = 12;
        m.update(&s);
        let text = m.render();
        assert!(text.contains("shoal_tasks_submitted_total 12"), "{text}");
        assert!(text.contains("shoal_tasks_finished_total 7"));
        assert!(text.contains("shoal_tasks_waiting_for_node 2"));
        assert!(text.contains("shoal_task_dispatch_latency_seconds_count 2"));
        assert!(text.contains("# TYPE shoal_tasks_failed counter"));
    }
}
