//! `shoal status`: nodes, resources and task counts, as a table or JSON.

use crate::StatusArgs;
use anyhow::anyhow;
use shoal::config;
use shoal::status::ClusterStatus;
use std::collections::BTreeMap;

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let address = config::resolve_address(args.address.as_deref())
        .ok_or_else(|| anyhow!("no head address: pass --address HOST:PORT, set SHOAL_ADDRESS, or run `shoal start --head` on this machine"))?;
    let token = config::resolve_token(args.token.token.as_deref(), args.token.token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let st = rt.block_on(shoal::status::fetch(&address, token.as_deref())).map_err(|e| match e {
        shoal::Error::Unauthenticated { address, message } => anyhow!(
            "the head at {address} refused the cluster token ({message}). Pass --token or --token-file, or set SHOAL_TOKEN / SHOAL_TOKEN_FILE."
        ),
        other => anyhow!(other),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print_table(&address, &st);
    }
    Ok(())
}

fn fmt_res(total: &BTreeMap<String, f64>, avail: &BTreeMap<String, f64>) -> String {
    total.iter().map(|(k, t)| format!("{k} {}/{}", avail.get(k).copied().unwrap_or(0.0), t)).collect::<Vec<_>>().join(", ")
}

fn print_table(address: &str, st: &ClusterStatus) {
    let alive = st.alive_nodes().count();
    println!("Shoal cluster at {address} (head {})", st.version);
    println!("Nodes: {alive} alive, {} dead", st.nodes.len() - alive);
    println!("  {:<36}  {:<15}  {:<5}  {:>7}  {:>9}  RESOURCES (available/total)", "ID", "ADDRESS", "STATE", "RUNNING", "HEARTBEAT");
    for n in &st.nodes {
        println!(
            "  {:<36}  {:<15}  {:<5}  {:>7}  {:>8.1}s  {}",
            n.id,
            n.address,
            if n.alive { "alive" } else { "dead" },
            n.tasks_running,
            n.last_heartbeat_age_s,
            fmt_res(&n.resources, &n.available)
        );
    }
    let t = &st.tasks;
    println!("Tasks: queued {}, running {}, finished {}, failed {}", t.queued, t.running, t.finished, t.failed);
    println!("Drivers connected: {}", st.jobs);
}
