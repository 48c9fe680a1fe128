//! `shoal start`: run a head or a worker, in the foreground (`--block`) or
//! as a daemon (the same command re-executed with `--block`, detached, its
//! output in a log file under the session dir).

use crate::session::{self, is_shoal_process};
use crate::{StartArgs, init_tracing, net};
use anyhow::{Context, bail};
use shoal::config::{self, HeadSession};
use shoal_domain::ResourceSet;
use std::path::Path;
use std::time::{Duration, Instant};

pub fn run(args: StartArgs) -> anyhow::Result<()> {
    let home = config::shoal_home();
    config::private_dir(&home).with_context(|| format!("creating the session dir {}", home.display()))?;
    if !args.block {
        return daemonize(&args, &home);
    }
    init_tracing();
    crate::raise_open_file_limit();
    let threads = runtime_threads(args.runtime_threads, args.head, shoal_worker::config::detect_cpus());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    rt.block_on(async { if args.head { run_head(args, &home).await } else { run_worker(args, &home).await } })
}

/// Threads of a daemon's runtime: `asked` (at least 1), else one per 4
/// CPUs for a head and one per 8 for a worker, within 1..=8. The daemons
/// coordinate and move bytes; the CPUs belong to the executors running
/// tasks. On a 2-CPU
/// machine one thread measured better than two for every model workload
/// (fewer cross-thread wake-ups, no second thread competing with the
/// executors; see docs/performance.md).
fn runtime_threads(asked: Option<usize>, head: bool, cpus: usize) -> usize {
    match asked {
        Some(n) => n.max(1),
        None => (if head { cpus / 4 } else { cpus / 8 }).clamp(1, 8),
    }
}

fn parse_resources(args: &StartArgs) -> anyhow::Result<ResourceSet> {
    let mut res = ResourceSet::parse(&args.resources)?;
    res.cpus = match args.num_cpus {
        Some(n) if n.is_finite() && n >= 0.0 => n,
        Some(n) => bail!("--num-cpus must be a number >= 0, not {n}"),
        None => shoal_worker::config::detect_cpus() as f64,
    };
    Ok(res)
}

fn worker_config(args: &StartArgs, head: String, token: Option<String>, home: &Path) -> anyhow::Result<shoal_worker::WorkerConfig> {
    let mut wc = shoal_worker::WorkerConfig::new(head, token, config::binary_cache(home));
    wc.resources = parse_resources(args)?;
    if let Some(id) = &args.node_id {
        uuid::Uuid::parse_str(id).map_err(|_| anyhow::anyhow!("--node-id {id:?} is not a UUID"))?;
        wc.node_id = Some(id.clone());
    }
    let memory = wc.memory_bytes;
    if let Some(m) = &args.object_store_memory {
        wc.object_store_bytes = shoal_worker::config::parse_size(m, memory).map_err(|e| anyhow::anyhow!("--object-store-memory: {e}"))?;
        wc.object_store_prefault = wc.object_store_prefault.min(wc.object_store_bytes);
    }
    if let Some(p) = &args.object_store_prefault {
        wc.object_store_prefault = shoal_worker::config::parse_size(p, memory).map_err(|e| anyhow::anyhow!("--object-store-prefault: {e}"))?;
    }
    let bind = match (&args.object_bind, args.head) {
        (Some(b), _) => Some((b, "--object-bind")),
        (None, true) => Some((&args.bind, "--bind")),
        (None, false) => None,
    };
    match bind {
        Some((b, flag)) => {
            let ip: std::net::IpAddr = b.parse().with_context(|| format!("{flag} {b:?} is not an IP address"))?;
            wc.object_listen = std::net::SocketAddr::new(ip, args.object_port);
        }
        None => wc.object_listen.set_port(args.object_port),
    }
    // /metrics listens where the object store does (token-checked).
    if !args.no_metrics {
        wc.metrics_listen = Some(std::net::SocketAddr::new(wc.object_listen.ip(), args.metrics_port));
    }
    wc.object_host = args.object_host.clone();
    wc.spill_dir = home.join("spill").join(std::process::id().to_string());
    wc.connections = connection_limits(args)?;
    Ok(wc)
}

/// The bounds on connections the head's port and object stores apply.
fn connection_limits(args: &StartArgs) -> anyhow::Result<shoal_proto::net::Limits> {
    let seconds = |v: f64, flag: &str| {
        if v.is_finite() && v > 0.0 { Ok(Duration::from_secs_f64(v)) } else { Err(anyhow::anyhow!("{flag} must be > 0 seconds")) }
    };
    if args.max_connections == 0 || args.max_connections_per_peer == 0 {
        bail!("--max-connections and --max-connections-per-peer must be at least 1");
    }
    Ok(shoal_proto::net::Limits {
        handshake_deadline: seconds(args.handshake_timeout, "--handshake-timeout")?,
        idle_timeout: seconds(args.idle_timeout, "--idle-timeout")?,
        max_connections: args.max_connections,
        max_connections_per_peer: args.max_connections_per_peer,
        ..Default::default()
    })
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch for SIGTERM; only Ctrl-C stops this daemon");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn join_address(port: u16) -> String {
    match net::outward_ipv4() {
        Some(ip) => format!("{ip}:{port}"),
        None => format!("{}:{port}", shoal_worker::config::hostname()),
    }
}

async fn run_head(args: StartArgs, home: &Path) -> anyhow::Result<()> {
    let explicit = if args.token.token.is_some() || args.token.token_file.is_some() {
        config::resolve_token(args.token.token.as_deref(), args.token.token_file.as_deref())?
    } else {
        None
    };
    let data_dir = args.data_dir.clone().unwrap_or_else(|| home.join("head-data"));
    config::private_dir(&data_dir).with_context(|| format!("creating the data dir {}", data_dir.display()))?;
    // A restarted head keeps its token, so its workers and drivers can
    // reconnect with what they have.
    let kept_token = data_dir.join("token");
    let token = if args.insecure {
        eprintln!(
            "WARNING: starting the head WITHOUT a cluster token and WITHOUT encryption (--insecure): anyone who can reach port {} can run code on this cluster, and everything crosses the network in the clear.",
            args.port
        );
        let _ = std::fs::remove_file(&kept_token);
        None
    } else {
        let t = explicit.or_else(|| config::resolve_token(None, Some(&kept_token)).ok().flatten()).unwrap_or_else(shoal_proto::auth::generate_token);
        config::write_token_file(&kept_token, &t).with_context(|| format!("writing {}", kept_token.display()))?;
        Some(t)
    };
    let token_file = session::token_path(home);
    match &token {
        Some(t) => config::write_token_file(&token_file, t).with_context(|| format!("writing {}", token_file.display()))?,
        None => {
            let _ = std::fs::remove_file(&token_file);
        }
    }
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| format!("cannot listen on {}:{} (another head running? try `shoal stop` or --port)", args.bind, args.port))?;
    let mut cfg = shoal_scheduler::HeadConfig::new(token.clone(), config::binary_cache(home));
    let ca_copy = home.join("tls-ca.pem");
    let _ = std::fs::remove_file(&ca_copy);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let cert_pem = std::fs::read(cert).with_context(|| format!("reading --tls-cert {}", cert.display()))?;
        let key_pem = std::fs::read(key).with_context(|| format!("reading --tls-key {}", key.display()))?;
        // Local clients find the certificate here (as their CA).
        std::fs::write(&ca_copy, &cert_pem)?;
        cfg.tls = Some(shoal_scheduler::TlsIdentity { cert_pem, key_pem });
    }
    let scheme = if cfg.tls.is_some() { "https://" } else { "" };
    if !(args.heartbeat_timeout.is_finite() && args.heartbeat_timeout > 0.0) {
        bail!("--heartbeat-timeout must be > 0 seconds");
    }
    cfg.heartbeat_timeout = Duration::from_secs_f64(args.heartbeat_timeout);
    cfg.heartbeat_interval = cfg.heartbeat_interval.min(cfg.heartbeat_timeout / 4);
    cfg.wait_for_feasible_nodes = args.wait_for_nodes;
    if !(args.driver_grace.is_finite() && args.driver_grace >= 0.0) {
        bail!("--driver-grace must be >= 0 seconds");
    }
    cfg.driver_grace = Duration::from_secs_f64(args.driver_grace);
    cfg.data_dir = Some(data_dir.clone());
    cfg.compact_after_bytes = args.log_compact_bytes;
    if args.max_tasks_per_job == 0 || args.max_tasks == 0 {
        bail!("--max-tasks-per-job and --max-tasks must be at least 1");
    }
    cfg.admission = shoal_scheduler::AdmissionLimits { per_job: args.max_tasks_per_job, total: args.max_tasks };
    cfg.task_events = args.task_events;
    cfg.connections = connection_limits(&args)?;
    if !args.no_dashboard {
        let ip: std::net::IpAddr = args.dashboard_host.parse().with_context(|| format!("--dashboard-host {:?} is not an IP address", args.dashboard_host))?;
        cfg.dashboard = Some(std::net::SocketAddr::new(ip, args.dashboard_port));
    }
    let head = shoal_scheduler::start(cfg, listener).await.with_context(|| format!("starting the head (data dir {})", data_dir.display()))?;
    let port = head.addr.port();
    let ip: std::net::IpAddr = args.bind.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    // With TLS, local clients name the host as the certificate does.
    let local_host = if ip.is_unspecified() || ip.is_loopback() {
        if scheme.is_empty() { "127.0.0.1".to_string() } else { "localhost".to_string() }
    } else {
        ip.to_string()
    };
    let local = format!("{scheme}{local_host}:{port}");
    let dashboard =
        head.dashboard_addr().map(|a| format!("http://{}:{}", if a.ip().is_unspecified() { "127.0.0.1".to_string() } else { a.ip().to_string() }, a.port()));
    let record =
        HeadSession { address: local.clone(), token_file: token.as_ref().map(|_| token_file.clone()), pid: std::process::id(), dashboard: dashboard.clone() };
    config::write_private_file(&config::head_session_path(home), &serde_json::to_vec_pretty(&record)?)?;
    let pid_file = session::write_pid_file(home, "head")?;
    let public = if ip.is_unspecified() { format!("{scheme}{}", join_address(port)) } else { local.clone() };
    println!("Shoal head started (pid {}).", std::process::id());
    println!("  address:    {public}   (local: {local})");
    match &token {
        Some(_) => {
            println!("  token file: {}", token_file.display());
            println!("To join another node, copy the token file there and run:");
            let tls = if scheme.is_empty() { String::new() } else { format!(" --tls-ca {}", ca_copy.display()) };
            println!("  shoal start --address {public} --token-file {}{tls}", token_file.display());
        }
        None => println!("To join another node:\n  shoal start --address {public}"),
    }
    println!("Programs on this machine connect with SHOAL_ADDRESS=auto (or {local}); `shoal status` shows the cluster.");
    match head.dashboard_login_url("127.0.0.1") {
        Some(url) => println!("  dashboard:  {url}\n              (a one-time login link; `shoal dashboard` prints a new one)"),
        None if !args.no_dashboard => println!("  dashboard:  not served: port {} is taken (see the log; --dashboard-port picks another)", args.dashboard_port),
        None => {}
    }

    let worker = if args.num_cpus != Some(0.0) {
        let mut wc = worker_config(&args, local.clone(), token.clone(), home)?;
        // The local worker shares the head's process: its session goes over
        // channels, not loopback gRPC.
        wc.local_head = Some(head.local_link());
        // Peers reach its store at the address other nodes join the head at.
        if wc.object_host.is_none() {
            wc.object_host = public.trim_start_matches("https://").rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']']).to_string());
        }
        let mut w = shoal_worker::start(wc).await?;
        let id = w.registered().await?;
        println!("  local worker: node {id}");
        Some(w)
    } else {
        None
    };
    tokio::select! {
        _ = terminated() => {}
        why = head.loop_ended() => {
            // Never expected; exit so a supervisor restarts the head, which
            // resumes from its durable log.
            tracing::error!(%why, "the head's event loop ended; exiting");
            std::process::exit(70);
        }
    }
    tracing::info!("stopping the head");
    if let Some(w) = worker {
        let _ = w.shutdown().await;
    }
    head.shutdown().await;
    let _ = std::fs::remove_file(&pid_file);
    if config::read_head_session(home).is_some_and(|s| s.pid == std::process::id()) {
        let _ = std::fs::remove_file(config::head_session_path(home));
    }
    Ok(())
}

async fn run_worker(args: StartArgs, home: &Path) -> anyhow::Result<()> {
    let address = args.address.clone().expect("clap requires --head or --address");
    let token = config::resolve_token(args.token.token.as_deref(), args.token.token_file.as_deref())?;
    let mut worker = shoal_worker::start(worker_config(&args, address.clone(), token, home)?).await?;
    let pid_file = session::write_pid_file(home, "worker")?;
    let cleanup = || {
        let _ = std::fs::remove_file(&pid_file);
        let _ = std::fs::remove_file(session::ready_file(home, std::process::id()));
    };
    tokio::select! {
        r = worker.registered() => match r {
            Ok(id) => {
                std::fs::write(session::ready_file(home, std::process::id()), &id)?;
                println!("Shoal worker (pid {}) joined the head at {address} as node {id}.", std::process::id());
            }
            Err(e) => {
                cleanup();
                bail!("{e}");
            }
        },
        _ = terminated() => {
            let _ = worker.shutdown().await;
            cleanup();
            return Ok(());
        }
    }
    let result = tokio::select! {
        r = worker.wait_ref() => r,
        _ = terminated() => Ok(()),
    };
    let _ = worker.shutdown().await;
    cleanup();
    result.map_err(Into::into)
}

/// Re-executes this command with `--block`, detached, logging to a file,
/// and waits until the daemon is ready (or failed) before returning.
fn daemonize(args: &StartArgs, home: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let role = if args.head { "head" } else { "worker" };
    let logs = session::log_dir(home);
    config::private_dir(&logs)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let log_path = logs.join(format!("{role}-{stamp}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1)).arg("--block").stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the daemon from the
    // terminal's session so closing the terminal does not stop it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the daemon")?;
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("the {role} exited during start-up ({status}); its log {}:\n{}", log_path.display(), tail.join("\n"));
        }
        let ready = if args.head {
            config::read_head_session(home).is_some_and(|s| s.pid == pid)
                && std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("Programs on this machine"))
        } else {
            session::ready_file(home, pid).exists()
        };
        if ready {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            for line in log.lines().filter(|l| !l.contains(" INFO ") && !l.contains(" WARN ") && !l.contains(" DEBUG ")) {
                println!("{line}");
            }
            println!("  log: {}", log_path.display());
            return Ok(());
        }
        if Instant::now() > deadline {
            if args.head || !is_shoal_process(pid) {
                bail!("the {role} did not become ready within 20s; see {}", log_path.display());
            }
            println!("Shoal worker started (pid {pid}) but has not reached the head yet; it keeps retrying. Log: {}", log_path.display());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::runtime_threads;

    #[test]
    fn daemons_take_few_runtime_threads_unless_asked() {
        assert_eq!(runtime_threads(None, true, 2), 1, "a 2-CPU head");
        assert_eq!(runtime_threads(None, false, 2), 1, "a 2-CPU worker");
        assert_eq!(runtime_threads(None, true, 16), 4);
        assert_eq!(runtime_threads(None, false, 16), 2);
        assert_eq!(runtime_threads(None, true, 128), 8, "at most 8 by default");
        assert_eq!(runtime_threads(Some(12), false, 2), 12, "asked is asked");
        assert_eq!(runtime_threads(Some(0), true, 64), 1, "never none");
    }
}
