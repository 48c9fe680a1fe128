//! `shoal list|get|summary|timeline|dashboard`: the head's state API, as
//! tables, JSON, or a Chrome trace (which Perfetto and chrome://tracing
//! open). The dashboard reads the same API.

use crate::status::explain;
use crate::{DashboardArgs, GetArgs, ListArgs, SummaryArgs, TimelineArgs};
use anyhow::{Context, bail};
use comfy_table::{CellAlignment, ContentArrangement, Table, presets::NOTHING};
use shoal::status::{TaskFilter, TaskPhase, TaskRow};
use shoal_domain::size::format_size;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn table(header: &[&str], right: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(header.to_vec());
    for col in right {
        if let Some(c) = t.column_mut(*col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// A duration in microseconds, as people read it.
pub fn duration(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.1}ms", us / 1_000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

fn short(node: Option<shoal_domain::NodeId>) -> String {
    node.map(|n| n.to_string()).unwrap_or_default()
}

fn task_filter(args: &ListArgs) -> anyhow::Result<TaskFilter> {
    let phase = match args.state.as_deref() {
        None => None,
        Some(s) => Some(TaskPhase::parse(s).with_context(|| format!("unknown --state {s:?}: pending, running, finished or failed"))?),
    };
    Ok(TaskFilter { job: args.job, function: args.function.clone(), phase, node: args.node.clone(), limit: args.limit })
}

pub fn list(args: ListArgs) -> anyhow::Result<()> {
    let (address, token) = args.head.resolve()?;
    let rt = runtime()?;
    let token = token.as_deref();
    match args.what.as_str() {
        "tasks" => {
            let list = rt.block_on(shoal::status::list_tasks(&address, token, &task_filter(&args)?)).map_err(explain)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let mut t = table(&["ID", "JOB", "FUNCTION", "STATE", "NODE", "ATTEMPTS", "RAN", "ERROR"], &[5, 6]);
            for r in &list.tasks {
                t.add_row([
                    r.id.to_string(),
                    r.job.to_string(),
                    r.function.clone(),
                    r.phase.as_str().to_string(),
                    short(r.node),
                    r.attempts.to_string(),
                    r.run_us.map(|u| duration(u as f64)).unwrap_or_default(),
                    r.error.as_ref().map(|e| format!("{}: {}", e.kind, e.message)).unwrap_or_default(),
                ]);
            }
            println!("{t}");
            println!(
                "{} of {} matching task(s); the head tracks {} (at most {}; {} dropped since it started)",
                list.tasks.len(),
                list.matched,
                list.tracked,
                list.capacity,
                list.dropped
            );
        }
        "jobs" => {
            let jobs = rt.block_on(shoal::status::list_jobs(&address, token)).map_err(explain)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
                return Ok(());
            }
            let mut t = table(&["JOB", "NAME", "PARENT", "STATE", "PENDING", "RUNNING", "FINISHED", "FAILED"], &[4, 5, 6, 7]);
            for j in jobs.iter().take(if args.limit == 0 { usize::MAX } else { args.limit as usize }) {
                t.add_row([
                    j.id.to_string(),
                    j.name.clone(),
                    j.parent.map(|p| p.to_string()).unwrap_or_default(),
                    if j.ended_at_us.is_some() { "ended" } else { "running" }.to_string(),
                    j.tasks.pending.to_string(),
                    j.tasks.running.to_string(),
                    j.tasks.finished.to_string(),
                    j.tasks.failed.to_string(),
                ]);
            }
            println!("{t}");
        }
        "nodes" | "actors" => {
            let st = rt.block_on(shoal::status::fetch(&address, token)).map_err(explain)?;
            if args.what == "nodes" {
                let nodes: Vec<_> = st.nodes.iter().filter(|n| args.node.as_deref().is_none_or(|p| format!("{:#}", n.id).starts_with(p))).collect();
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&nodes)?);
                    return Ok(());
                }
                let mut t = table(&["ID", "HOST", "ADDRESS", "STATE", "RUNNING", "CPUS (available/total)", "OBJECT STORE"], &[4]);
                for n in nodes {
                    let state = if !n.alive {
                        "dead"
                    } else if n.draining {
                        "draining"
                    } else {
                        "alive"
                    };
                    t.add_row([
                        format!("{:#}", n.id),
                        n.hostname.clone(),
                        n.address.clone(),
                        state.to_string(),
                        n.tasks_running.to_string(),
                        format!("{}/{}", n.available.cpus, n.resources.cpus),
                        format!("{}/{}", format_size(n.store.used), format_size(n.store.capacity)),
                    ]);
                }
                println!("{t}");
            } else {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&st.actors)?);
                    return Ok(());
                }
                let mut t = table(&["ID", "CLASS", "NAME", "STATE", "NODE", "RESTARTS", "DEATH"], &[5]);
                for a in &st.actors {
                    t.add_row([a.id.to_string(), a.class.clone(), a.name.clone(), a.state.to_string(), short(a.node), a.restarts.to_string(), a.death.clone()]);
                }
                println!("{t}");
            }
        }
        "objects" => {
            let list = rt.block_on(shoal::status::list_objects(&address, token, args.job, args.limit)).map_err(explain)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            let mut t = table(&["ID", "SIZE", "WHERE", "DRIVER REF", "REFS"], &[1, 4]);
            for o in &list.objects {
                let at = if o.stored { o.holders.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(" ") } else { "inline (head)".into() };
                t.add_row([o.id.to_string(), format_size(o.size), at, if o.driver_ref { "yes" } else { "no" }.into(), o.refs.to_string()]);
            }
            println!("{t}");
            println!("{} of {} object(s), largest first", list.objects.len(), list.total);
        }
        other => bail!("cannot list {other:?}: tasks, jobs, nodes, objects or actors"),
    }
    Ok(())
}

pub fn get(args: GetArgs) -> anyhow::Result<()> {
    if args.what != "task" {
        bail!("cannot get {:?}: only `shoal get task ID`", args.what);
    }
    let (address, token) = args.head.resolve()?;
    let r = runtime()?.block_on(shoal::status::get_task(&address, token.as_deref(), &args.id)).map_err(explain)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("task {} (job {}) {}: {}", r.id, r.job, r.function, r.phase.as_str());
    println!("  attempts:   {}", r.attempts);
    if let Some(n) = r.node {
        println!("  node:       {n:#}");
    }
    if let (Some(pid), Some(us)) = (r.executor_pid, r.run_us) {
        println!("  ran:        {} in executor pid {pid}", duration(us as f64));
    }
    if let Some(e) = &r.error {
        let at = if e.location.is_empty() { String::new() } else { format!(" at {}", e.location) };
        println!("  error:      {}: {}{at}", e.kind, e.message);
    }
    Ok(())
}

pub fn summary(args: SummaryArgs) -> anyhow::Result<()> {
    if args.what != "tasks" {
        bail!("cannot summarise {:?}: only `shoal summary tasks`", args.what);
    }
    let (address, token) = args.head.resolve()?;
    let rows = runtime()?.block_on(shoal::status::summary(&address, token.as_deref(), args.job)).map_err(explain)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut t = table(&["JOB", "FUNCTION", "PENDING", "RUNNING", "FINISHED", "FAILED", "MEAN", "P95"], &[2, 3, 4, 5, 6, 7]);
    for s in &rows {
        t.add_row([
            s.job.to_string(),
            s.function.clone(),
            s.tasks.pending.to_string(),
            s.tasks.running.to_string(),
            s.tasks.finished.to_string(),
            s.tasks.failed.to_string(),
            s.mean_run_us.map(duration).unwrap_or_default(),
            s.p95_run_us.map(duration).unwrap_or_default(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// Tasks that ran, as Chrome trace events: one complete event (`X`) per
/// task, a process per node and a thread per executor process.
pub fn chrome_trace(tasks: &[TaskRow]) -> serde_json::Value {
    let mut nodes: Vec<shoal_domain::NodeId> = tasks.iter().filter_map(|t| t.node).collect();
    nodes.sort();
    nodes.dedup();
    let pid = |t: &TaskRow| t.node.and_then(|n| nodes.iter().position(|x| *x == n)).map_or(0, |i| i + 1);
    let mut events: Vec<serde_json::Value> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| serde_json::json!({"ph": "M", "name": "process_name", "pid": i + 1, "args": {"name": format!("node {n:#}")}}))
        .collect();
    let mut ran: Vec<&TaskRow> = tasks.iter().filter(|t| t.started_at_us.is_some() && t.run_us.is_some()).collect();
    ran.sort_by_key(|t| t.started_at_us);
    for t in ran {
        events.push(serde_json::json!({
            "name": t.function,
            "cat": "task",
            "ph": "X",
            "ts": t.started_at_us,
            "dur": t.run_us,
            "pid": pid(t),
            "tid": t.executor_pid.unwrap_or(0),
            "args": {"task": t.id.to_string(), "job": t.job, "state": t.phase.as_str(), "attempts": t.attempts},
        }));
    }
    serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

pub fn timeline(args: TimelineArgs) -> anyhow::Result<()> {
    let (address, token) = args.head.resolve()?;
    let filter = TaskFilter { job: args.job, limit: 1_000_000, ..Default::default() };
    let list = runtime()?.block_on(shoal::status::list_tasks(&address, token.as_deref(), &filter)).map_err(explain)?;
    let trace = chrome_trace(&list.tasks);
    let n = trace["traceEvents"].as_array().map_or(0, |e| e.iter().filter(|e| e["ph"] == "X").count());
    let out = args.output.unwrap_or_else(|| std::path::PathBuf::from("timeline.json"));
    std::fs::write(&out, serde_json::to_vec(&trace)?).with_context(|| format!("writing {}", out.display()))?;
    println!("Wrote {n} task(s) to {} (open it in https://ui.perfetto.dev or chrome://tracing).", out.display());
    if list.dropped > 0 {
        println!("The head dropped {} older task(s) from its bounded store (--task-events on the head keeps more).", list.dropped);
    }
    Ok(())
}

pub fn dashboard(args: DashboardArgs) -> anyhow::Result<()> {
    let (address, token) = args.head.resolve()?;
    let url = runtime()?.block_on(shoal::status::dashboard_login(&address, token.as_deref())).map_err(explain)?;
    println!("{url}");
    if url.contains("code=") {
        eprintln!("(a one-time link: it logs one browser in, for 24 hours; it lapses unused after 15 minutes)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_domain::ObjectId;

    fn row(seq: u64, started: Option<u64>) -> TaskRow {
        TaskRow {
            id: ObjectId::new(1, seq),
            job: 1,
            function: "f".into(),
            phase: TaskPhase::Finished,
            node: Some(shoal_domain::NodeId::random()),
            attempts: 1,
            submitted_at_us: 0,
            dispatched_at_us: None,
            started_at_us: started,
            run_us: started.map(|_| 10),
            ended_at_us: None,
            executor_pid: Some(9),
            error: None,
        }
    }

    #[test]
    fn the_trace_has_one_complete_event_per_task_that_ran_and_names_its_nodes() {
        let trace = chrome_trace(&[row(1, Some(100)), row(2, None), row(3, Some(50))]);
        let events = trace["traceEvents"].as_array().unwrap();
        let tasks: Vec<_> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0]["ts"], 50, "in start order");
        assert!(events.iter().filter(|e| e["ph"] == "M").count() >= 2, "one name per node");
    }
}
