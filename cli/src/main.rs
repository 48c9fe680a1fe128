//! The `shoal` command: one binary for every role.
//!
//! - `shoal start --head` runs the head (and a worker on the same node);
//! - `shoal start --address HOST:PORT` joins a worker to a head;
//! - `shoal status` shows nodes, resources, task counts and actors;
//! - `shoal stop` stops the daemons started from this machine;
//! - `shoal list|get|summary|timeline` read the head's state API, and
//!   `shoal dashboard` prints a login link to its web page.
//!
//! The binary is thin: parse arguments, build the library configs, run.

mod logs;
mod net;
mod session;
mod start;
mod state;
mod status;
mod stop;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// The daemons allocate with jemalloc, which hands freed memory back to the
/// system by itself: its background threads purge pages left unused for a
/// second. glibc's arenas kept most of what a million-task job had freed
/// (70-130 MiB of fragments after the job, 11 MiB idle), however often the
/// head called `malloc_trim`.
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (the crate prefixes its
/// symbols with `_rjem_`): background purging, dirty pages returned after
/// a second, none kept lazily ("muzzy"). `_RJEM_MALLOC_CONF` in the
/// environment still overrides them.
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
pub static malloc_conf: MallocConf = MallocConf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string jemalloc reads at start, shareable as a `static`.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);
// SAFETY: the pointer is to a string literal, never written.
unsafe impl Sync for MallocConf {}

#[derive(Parser)]
#[command(name = "shoal", version, about = "Shoal: a distributed task scheduler for Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a head (--head) or a worker joining a head (--address).
    Start(Box<StartArgs>),
    /// Show nodes, resources, task counts and actors.
    Status(StatusArgs),
    /// Stop the shoal daemons started from this machine (this $SHOAL_HOME).
    Stop(StopArgs),
    /// Drain a node: no new tasks; it finishes what it holds, then its worker exits.
    Drain(DrainArgs),
    /// Run a program against the cluster (its SHOAL_ADDRESS and token set).
    Submit(SubmitArgs),
    /// Show the logs of the daemons started from this machine.
    Logs(LogsArgs),
    /// List tasks, jobs, nodes, objects or actors (`shoal list tasks --state failed`).
    List(ListArgs),
    /// Show one task: `shoal get task 3.17`.
    Get(GetArgs),
    /// Per function: tasks by state, mean and p95 run time (`shoal summary tasks`).
    Summary(SummaryArgs),
    /// Write the tasks that ran as a Chrome trace (open in Perfetto).
    Timeline(TimelineArgs),
    /// Print a one-time login link to the head's dashboard.
    Dashboard(DashboardArgs),
}

#[derive(Args, Clone, Debug)]
struct ListArgs {
    /// What to list: tasks, jobs, nodes, objects or actors.
    what: String,
    /// Only this job's.
    #[arg(long)]
    job: Option<u32>,
    /// Only tasks of this function.
    #[arg(long)]
    function: Option<String>,
    /// Only tasks in this state: pending, running, finished, failed.
    #[arg(long)]
    state: Option<String>,
    /// Only tasks on (or nodes with) an id starting with this.
    #[arg(long)]
    node: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    head: HeadArgs,
}

#[derive(Args, Clone, Debug)]
struct GetArgs {
    /// What to show: task.
    what: String,
    /// Its id (`job.seq`, as `shoal list tasks` prints it).
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    head: HeadArgs,
}

#[derive(Args, Clone, Debug)]
struct SummaryArgs {
    /// What to summarise: tasks.
    what: String,
    /// Only this job's functions.
    #[arg(long)]
    job: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    head: HeadArgs,
}

#[derive(Args, Clone, Debug)]
struct TimelineArgs {
    /// Only this job's tasks.
    #[arg(long)]
    job: Option<u32>,
    /// Where to write the trace (default timeline.json).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    #[command(flatten)]
    head: HeadArgs,
}

#[derive(Args, Clone, Debug)]
struct DashboardArgs {
    #[command(flatten)]
    head: HeadArgs,
}

#[derive(Args, Clone, Debug)]
struct SubmitArgs {
    #[command(flatten)]
    head: HeadArgs,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args, Clone, Debug)]
struct LogsArgs {
    /// Only this role's logs: head or worker.
    #[arg(long)]
    role: Option<String>,
    /// Lines from the end of each log.
    #[arg(long, short = 'n', default_value_t = 50)]
    lines: usize,
    /// Keep printing what is appended (Ctrl-C to stop).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Instead: what this job's tasks printed (kept by the head), each line with its function, task and node.
    #[arg(long)]
    job: Option<u32>,
    #[command(flatten)]
    head: HeadArgs,
}

#[derive(Args, Clone, Debug)]
struct DrainArgs {
    /// The node's id (see `shoal status`).
    node_id: String,
    /// Seconds to wait for the node to finish and leave (0: do not wait).
    #[arg(long, default_value_t = 300.0)]
    wait: f64,
    #[command(flatten)]
    head: HeadArgs,
}

/// Which head, and how to prove the right to ask it.
#[derive(Args, Clone, Debug, Default)]
struct HeadArgs {
    /// Head address (default: SHOAL_ADDRESS, then the local session).
    #[arg(long)]
    address: Option<String>,
    #[command(flatten)]
    token: TokenArgs,
}

impl HeadArgs {
    /// The head's address and the token to send it.
    fn resolve(&self) -> anyhow::Result<(String, Option<String>)> {
        status::head_and_token(self.address.as_deref(), &self.token)
    }
}

/// Where the token comes from (flags first, then SHOAL_TOKEN,
/// SHOAL_TOKEN_FILE, then the local session dir).
#[derive(Args, Clone, Debug, Default)]
struct TokenArgs {
    /// Cluster token.
    #[arg(long)]
    token: Option<String>,
    /// File holding the cluster token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// CA (or self-signed) certificate of a TLS head (`https://` address).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
#[command(group = clap::ArgGroup::new("role").required(true).args(["head", "address"]))]
struct StartArgs {
    /// Start the head node (and, unless --num-cpus 0, a worker beside it).
    #[arg(long)]
    head: bool,
    /// Join a worker to the head at HOST:PORT.
    #[arg(long)]
    address: Option<String>,
    /// Head: port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 7170)]
    port: u16,
    /// Head: address to bind.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// Stay in the foreground (for containers and systemd) instead of daemonizing.
    #[arg(long)]
    block: bool,
    /// CPUs this node offers to tasks (default: all; 0 on a head = no local worker).
    #[arg(long)]
    num_cpus: Option<f64>,
    /// Custom resources this node offers, e.g. gpu=2,ssd=1.
    #[arg(long, default_value = "")]
    resources: String,
    /// Pin this worker's node id (a UUID), e.g. for a node restarted under systemd.
    #[arg(long)]
    node_id: Option<String>,
    /// Size of this node's shared-memory object store: bytes, 2GiB, 512MiB, 25% (default 30% of memory).
    #[arg(long, env = "SHOAL_OBJECT_STORE_MEMORY")]
    object_store_memory: Option<String>,
    /// How much of the object store to back with memory at start, so first writes run at memcpy speed (default 1GiB).
    #[arg(long, env = "SHOAL_OBJECT_STORE_PREFAULT")]
    object_store_prefault: Option<String>,
    /// Port of this node's object store service, which peers pull objects from (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    object_port: u16,
    /// Address the object store service binds (default: the head's --bind on a head, 0.0.0.0 on a worker, which peers on other hosts must reach). Encrypted and token-checked either way.
    #[arg(long)]
    object_bind: Option<String>,
    /// Host or IP peers use to reach the object store (default: the address the head sees).
    #[arg(long)]
    object_host: Option<String>,
    /// Port of this worker's Prometheus /metrics (0 picks a free one; the head lists every worker's for discovery). It binds where the object store does and needs the cluster token.
    #[arg(long, default_value_t = 0)]
    metrics_port: u16,
    /// Serve no worker /metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Head: run WITHOUT a cluster token and WITHOUT encryption (plain gRPC everywhere). Anyone who can reach the port can run code.
    #[arg(long, alias = "insecure-no-token")]
    insecure: bool,
    /// Connections with the cluster token that the head's port (and each object store's) holds at once; past it a new one is refused with "too many connections".
    #[arg(long, default_value_t = 16_384)]
    max_connections: usize,
    /// The same, from one IP address.
    #[arg(long, default_value_t = 4096)]
    max_connections_per_peer: usize,
    /// Seconds a connection has from its accept to finish its TLS handshake and send a request with the token.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Seconds after which a connection with no request in progress is closed (Shoal's own clients keep their links open as streams).
    #[arg(long, default_value_t = 300.0)]
    idle_timeout: f64,
    /// Head: seconds without a heartbeat before a worker is declared dead.
    #[arg(long, default_value_t = 5.0)]
    heartbeat_timeout: f64,
    /// Head: wait for a node that fits instead of failing tasks no node can run.
    #[arg(long)]
    wait_for_nodes: bool,
    /// Head: where it keeps its durable log (default: head-data in the session dir). A head restarted with the same data dir (and address) resumes the work in flight; workers and drivers reconnect on their own.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Head: seconds a job waits for its driver to reconnect after losing it.
    #[arg(long, default_value_t = 30.0)]
    driver_grace: f64,
    /// Head: compact a job's log to a snapshot once it holds this many bytes (tests use small values).
    #[arg(long, default_value_t = 64 << 20, hide = true)]
    log_compact_bytes: u64,
    /// Head: unfinished tasks one job may have; past it, the head stops reading that driver until its queue drains below 90% (the driver's submissions wait).
    #[arg(long, default_value_t = 1_000_000)]
    max_tasks_per_job: u64,
    /// Head: unfinished tasks of all jobs together before every driver's submissions wait.
    #[arg(long, default_value_t = 4_000_000)]
    max_tasks: u64,
    /// Head: port of the dashboard and /metrics (0 picks a free one).
    #[arg(long, default_value_t = 7171)]
    dashboard_port: u16,
    /// Head: address the dashboard binds (loopback: reach it from elsewhere through an SSH tunnel, or bind 0.0.0.0; it always needs a login link or the token).
    #[arg(long, default_value = "127.0.0.1")]
    dashboard_host: String,
    /// Head: serve no dashboard and no /metrics.
    #[arg(long)]
    no_dashboard: bool,
    /// Head: task rows kept for `shoal list tasks`, the timeline and the dashboard (older ones are dropped first; counts stay exact).
    #[arg(long, default_value_t = 100_000)]
    task_events: usize,
    /// Head: serve TLS with this PEM certificate (chain); clients then use https://.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Head: the private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Threads of the daemon's own async runtime (default: one per 4 CPUs on a head, one per 8 on a worker, 1 to 8). The head's scheduler is one loop whatever this is; more threads carry more connections' TLS and HTTP/2. Tasks never run on these threads: they run in executor processes, which keep the CPUs.
    #[arg(long, env = "SHOAL_RUNTIME_THREADS")]
    runtime_threads: Option<usize>,
    #[command(flatten)]
    token: TokenArgs,
}

#[derive(Args, Clone, Debug)]
struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    head: HeadArgs,
}

#[derive(Args, Clone, Debug)]
struct StopArgs {
    /// Seconds to wait for a graceful exit before SIGKILL.
    #[arg(long, default_value_t = 10.0)]
    grace: f64,
}

/// Raises this process's open-file limit to its hard limit: a head holds
/// one descriptor per connection (workers, drivers, and whoever else
/// connects), a worker one per executor socket and spill file; the common
/// default of 1,024 lets a thousand idle connections make a head
/// unreachable.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!(before, "could not raise the open-file limit");
            }
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,h2=warn,tower=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).try_init();
}

fn main() {
    let cli = Cli::parse();
    let tls_ca = match &cli.command {
        Command::Start(a) => a.token.tls_ca.clone(),
        Command::Status(a) => a.head.token.tls_ca.clone(),
        Command::Drain(a) => a.head.token.tls_ca.clone(),
        Command::Submit(a) => a.head.token.tls_ca.clone(),
        Command::List(a) => a.head.token.tls_ca.clone(),
        Command::Get(a) => a.head.token.tls_ca.clone(),
        Command::Summary(a) => a.head.token.tls_ca.clone(),
        Command::Timeline(a) => a.head.token.tls_ca.clone(),
        Command::Dashboard(a) => a.head.token.tls_ca.clone(),
        Command::Logs(a) => a.head.token.tls_ca.clone(),
        Command::Stop(_) => None,
    };
    if let Some(ca) = tls_ca {
        // SAFETY: still single-threaded: no runtime or thread exists yet.
        unsafe { std::env::set_var(shoal_proto::client::ENV_TLS_CA, ca) };
    }
    let result = match cli.command {
        Command::Start(args) => start::run(*args),
        Command::Status(args) => status::run(args),
        Command::Stop(args) => stop::run(args),
        Command::Drain(args) => status::drain(args),
        Command::Submit(args) => status::submit(args),
        Command::Logs(args) => logs::run(args),
        Command::List(args) => state::list(args),
        Command::Get(args) => state::get(args),
        Command::Summary(args) => state::summary(args),
        Command::Timeline(args) => state::timeline(args),
        Command::Dashboard(args) => state::dashboard(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
