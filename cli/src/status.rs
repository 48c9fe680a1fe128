//! `shoal status`: nodes, resources, task counts and actors, as a table or JSON.

use crate::{DrainArgs, StatusArgs, SubmitArgs};
use anyhow::anyhow;
use shoal::config;
use shoal::status::ClusterStatus;
use shoal_domain::ResourceSet;
use shoal_domain::size::format_size;

pub(crate) fn head_and_token(address: Option<&str>, token: &crate::TokenArgs) -> anyhow::Result<(String, Option<String>)> {
    let address = config::resolve_address(address)
        .ok_or_else(|| anyhow!("no head address: pass --address HOST:PORT, set SHOAL_ADDRESS, or run `shoal start --head` on this machine"))?;
    Ok((address, config::resolve_token(token.token.as_deref(), token.token_file.as_deref())?))
}

pub(crate) fn explain(e: shoal::Error) -> anyhow::Error {
    match e {
        shoal::Error::Unauthenticated { address, message } => {
            anyhow!("the head at {address} refused the cluster token ({message}). Pass --token or --token-file, or set SHOAL_TOKEN / SHOAL_TOKEN_FILE.")
        }
        other => anyhow!(other),
    }
}

pub fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let (address, token) = args.head.resolve()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Any unambiguous prefix names a node (`shoal drain 58e3`).
    let st = rt.block_on(shoal::status::fetch(&address, token.as_deref())).map_err(explain)?;
    let want = args.node_id.trim().to_ascii_lowercase();
    let matches: Vec<String> = st.alive_nodes().map(|n| format!("{:#}", n.id)).filter(|id| id.starts_with(&want)).collect();
    let node_id = match matches.as_slice() {
        [one] => one.clone(),
        [] => anyhow::bail!("no alive node's id starts with {:?} (`shoal status` lists them)", args.node_id),
        many => anyhow::bail!("{:?} is ambiguous: it starts {}", args.node_id, many.join(", ")),
    };
    let args = DrainArgs { node_id, ..args };
    rt.block_on(shoal::status::drain(&address, token.as_deref(), &args.node_id)).map_err(explain)?;
    println!("Draining node {}: no new tasks; it finishes the ones it holds, then its worker exits.", args.node_id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(args.wait.max(0.0));
    while std::time::Instant::now() < deadline {
        let st = rt.block_on(shoal::status::fetch(&address, token.as_deref())).map_err(explain)?;
        match st.nodes.iter().find(|n| format!("{:#}", n.id) == args.node_id) {
            Some(n) if n.alive => std::thread::sleep(std::time::Duration::from_millis(100)),
            _ => {
                println!("Node {} has left the cluster.", args.node_id);
                return Ok(());
            }
        }
    }
    if args.wait > 0.0 {
        anyhow::bail!("node {} is still finishing its tasks after {:.0}s", args.node_id, args.wait);
    }
    Ok(())
}

/// Runs a program with the cluster's address, token and TLS CA in its
/// environment; exits with its exit code.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let (address, token) = args.head.resolve()?;
    let mut cmd = std::process::Command::new(&args.command[0]);
    cmd.args(&args.command[1..]).env(config::ENV_ADDRESS, &address);
    match token {
        Some(t) => cmd.env(config::ENV_TOKEN, t),
        None => cmd.env_remove(config::ENV_TOKEN),
    };
    cmd.env_remove(config::ENV_TOKEN_FILE);
    if let Some(ca) = shoal_proto::client::tls_ca_path() {
        cmd.env(shoal_proto::client::ENV_TLS_CA, ca);
    }
    let status = cmd.status().map_err(|e| anyhow!("cannot run {:?}: {e}", args.command[0]))?;
    std::process::exit(status.code().unwrap_or(1));
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (address, token) = args.head.resolve()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let st = rt.block_on(shoal::status::fetch(&address, token.as_deref())).map_err(explain)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    // What the state API adds (an older head has none of it).
    let overview = rt.block_on(shoal::status::overview(&address, token.as_deref())).ok();
    print_table(&address, &st, overview.as_ref());
    if let Some(o) = &overview {
        print_extras(o);
    }
    let local = config::read_head_session(&config::shoal_home()).filter(|s| s.address == address);
    if let Some(url) = local.and_then(|s| s.dashboard) {
        println!("Dashboard: {url} (`shoal dashboard` prints a login link)");
    }
    Ok(())
}

/// Usage totals, why tasks wait, and the jobs, from the state API.
fn print_extras(o: &shoal::status::Overview) {
    let alive: Vec<_> = o.status.alive_nodes().collect();
    let total: f64 = alive.iter().map(|n| n.resources.cpus).sum();
    let free: f64 = alive.iter().map(|n| n.available.cpus).sum();
    let used_store: u64 = alive.iter().map(|n| n.store.used).sum();
    let cap_store: u64 = alive.iter().map(|n| n.store.capacity).sum();
    println!("Usage: {:.1}/{total} CPUs, object stores {}/{}", total - free, format_size(used_store), format_size(cap_store));
    for d in &o.demand {
        println!("Waiting for a node: {} task(s) needing {}", d.tasks, d.resources);
    }
    let running: Vec<_> = o.jobs.iter().filter(|j| j.ended_at_us.is_none()).collect();
    for j in running.iter().take(10) {
        let t = &j.tasks;
        println!("Job {} {}: {} pending, {} running, {} finished, {} failed", j.id, j.name, t.pending, t.running, t.finished, t.failed);
    }
    if running.len() > 10 {
        println!("... and {} more jobs (`shoal list jobs`)", running.len() - 10);
    }
}

fn fmt_res(total: &ResourceSet, avail: &ResourceSet) -> String {
    let mut parts = vec![format!("cpus {}/{}", avail.cpus, total.cpus)];
    parts.extend(total.custom.iter().map(|(k, t)| format!("{k} {}/{t}", avail.get(k))));
    parts.join(", ")
}

fn fmt_store(s: &shoal::status::StoreUsage) -> String {
    format!("{}/{} ({} obj), {} ({} obj)", format_size(s.used), format_size(s.capacity), s.objects, format_size(s.spilled_bytes), s.spilled_objects)
}

fn print_table(address: &str, st: &ClusterStatus, overview: Option<&shoal::status::Overview>) {
    use comfy_table::{CellAlignment, ContentArrangement, Table, presets::NOTHING};
    let alive = st.alive_nodes().count();
    println!("Shoal cluster at {address} (head {})", st.version);
    println!("Nodes: {alive} alive, {} dead", st.nodes.len() - alive);
    let mut table = Table::new();
    table.load_preset(NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(["ID", "HOST", "ADDRESS", "STATE", "RUNNING", "HEARTBEAT", "OBJECT STORE (used/capacity, spilled)", "RESOURCES (available/total)"]);
    for n in &st.nodes {
        let state = if !n.alive {
            "dead"
        } else if n.draining {
            "drain"
        } else {
            "alive"
        };
        let head = overview.is_some_and(|o| o.head_pid == n.pid && o.head_hostname == n.hostname);
        table.add_row([
            format!("{:#}{}", n.id, if head { " (head)" } else { "" }),
            n.hostname.clone(),
            n.address.clone(),
            state.to_string(),
            n.tasks_running.to_string(),
            format!("{:.1}s", n.last_heartbeat_age_s),
            fmt_store(&n.store),
            fmt_res(&n.resources, &n.available),
        ]);
    }
    for col in [4, 5] {
        if let Some(c) = table.column_mut(col) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    println!("{table}");
    let t = &st.tasks;
    println!("Tasks: queued {}, running {}, finished {}, failed {}", t.queued, t.running, t.finished, t.failed);
    println!("Drivers connected: {}", st.jobs);
    if st.actors.is_empty() {
        return;
    }
    let live = st.actors.iter().filter(|a| a.state != shoal::ActorState::Dead).count();
    println!("Actors: {live} live, {} dead", st.actors.len() - live);
    let mut table = Table::new();
    table.load_preset(NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(["ID", "CLASS", "NAME", "STATE", "NODE", "RESTARTS", "DEATH"]);
    for a in &st.actors {
        let name = if a.name.is_empty() {
            String::new()
        } else if a.namespace.is_empty() {
            a.name.clone()
        } else {
            format!("{}/{}", a.namespace, a.name)
        };
        table.add_row([
            a.id.to_string(),
            a.class.clone(),
            name,
            a.state.to_string(),
            a.node.map(|n| n.to_string()).unwrap_or_default(),
            a.restarts.to_string(),
            a.death.clone(),
        ]);
    }
    println!("{table}");
}
