//! Connecting a program to a cluster: [`init`] (a remote head, or an
//! embedded local cluster), the process-wide connection, `put`, `cancel`,
//! `cluster_status` and `shutdown`.

use crate::driver::{Driver, Out};
use crate::error::{Error, Result, TaskError};
use crate::object_ref::ObjectRef;
use crate::objects::Cluster;
use crate::runtime::{block_on, runtime};
use crate::slot::Slot;
use crate::status::ClusterStatus;
use crate::values::Val;
use crate::{config, executor};
use serde::Serialize;
use shoal_domain::ResourceSet;
use shoal_proto::pb;
use shoal_store::binaries::{BinaryStore, hash_file};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How [`init_with`] finds or makes its cluster.
#[derive(Clone, Debug, Default)]
pub struct InitConfig {
    /// Head address (`host:port`). `None`: `SHOAL_ADDRESS` if set, else an
    /// embedded local cluster.
    pub address: Option<String>,
    /// Cluster token. `None`: `SHOAL_TOKEN`, `SHOAL_TOKEN_FILE`, or the
    /// local session's token file.
    pub token: Option<String>,
    /// File holding the cluster token.
    pub token_file: Option<PathBuf>,
    /// CPUs of the embedded cluster's worker (default: all).
    pub num_cpus: Option<f64>,
    /// Custom resources of the embedded cluster's worker (`gpu=1,...`).
    pub resources: Option<String>,
    /// Name of this program in `shoal status` (default: the executable's).
    pub name: Option<String>,
    /// Always start an embedded local cluster, ignoring `SHOAL_ADDRESS`.
    pub local: bool,
    /// Size of the embedded cluster's shared-memory object store in bytes
    /// (default: 30% of memory, or `SHOAL_OBJECT_STORE_MEMORY`).
    pub object_store_memory: Option<u64>,
    /// Where the embedded cluster serves its dashboard and `/metrics`.
    /// `None`: `SHOAL_DASHBOARD` if set (`host:port`, a port, or `off`),
    /// else loopback on a free port. The link is printed to stderr once
    /// and [`dashboard_url`] gives a new one.
    pub dashboard: Option<std::net::SocketAddr>,
    /// The embedded cluster serves no dashboard.
    pub no_dashboard: bool,
}

impl InitConfig {
    /// Connect to the head at `address`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
    /// Use this cluster token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    /// The embedded cluster's worker offers this many CPUs.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    /// The embedded cluster's worker offers these custom resources.
    pub fn resources(mut self, spec: impl Into<String>) -> Self {
        self.resources = Some(spec.into());
        self
    }
    /// Start an embedded local cluster even if `SHOAL_ADDRESS` is set.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }
    /// The embedded cluster's object store holds this many bytes.
    pub fn object_store_memory(mut self, bytes: u64) -> Self {
        self.object_store_memory = Some(bytes);
        self
    }
    /// The embedded cluster serves its dashboard at `at` (port 0: a free one).
    pub fn dashboard(mut self, at: std::net::SocketAddr) -> Self {
        self.dashboard = Some(at);
        self
    }
    /// The embedded cluster serves no dashboard (nor `/metrics`).
    pub fn no_dashboard(mut self) -> Self {
        self.no_dashboard = true;
        self
    }
}

/// The variable that places (`host:port`, a port) or turns off (`off`)
/// the embedded cluster's dashboard.
pub const ENV_DASHBOARD: &str = "SHOAL_DASHBOARD";

/// Where the embedded cluster's dashboard goes: `config`'s choice, else
/// `env` (`SHOAL_DASHBOARD`'s value), else loopback on a free port.
fn embedded_dashboard(config: &InitConfig, env: Option<&str>) -> Result<Option<std::net::SocketAddr>> {
    if config.no_dashboard {
        return Ok(None);
    }
    if let Some(at) = config.dashboard {
        return Ok(Some(at));
    }
    let loopback = |port| Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    match env.map(str::trim) {
        None | Some("") => Ok(loopback(0)),
        Some(v) if ["off", "false", "no", "none"].contains(&v.to_ascii_lowercase().as_str()) => Ok(None),
        Some(v) => match (v.parse::<u16>(), v.parse::<std::net::SocketAddr>()) {
            (Ok(port), _) => Ok(loopback(port)),
            (_, Ok(at)) => Ok(Some(at)),
            _ => Err(Error::Config(format!("{ENV_DASHBOARD}={v:?}: expected host:port, a port, or off"))),
        },
    }
}

struct Embedded {
    head: shoal_scheduler::HeadHandle,
    worker: shoal_worker::WorkerHandle,
}

static DRIVER: RwLock<Option<Arc<Cluster>>> = RwLock::new(None);
static EMBEDDED: Mutex<Option<Embedded>> = Mutex::new(None);
static INIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connects this program to a cluster: the head at `SHOAL_ADDRESS` if
/// set, else an embedded local cluster (a head and a worker using every
/// CPU, in this process; tasks run in executor processes). Calling it
/// again is a no-op.
///
/// ```no_run
/// # async fn demo() -> shoal::Result<()> {
/// shoal::init().await?;
/// let st = shoal::cluster_status().await?;
/// println!("{} node(s)", st.alive_nodes().count());
/// # Ok(()) }
/// ```
pub async fn init() -> Result<()> {
    init_with(InitConfig::default()).await
}

/// [`init`] with explicit settings.
pub async fn init_with(config: InitConfig) -> Result<()> {
    runtime().spawn(do_init(config)).await.map_err(|e| Error::Embedded(format!("init task failed: {e}")))?
}

/// Blocking form of [`init`], for programs without an async runtime.
pub fn init_blocking() -> Result<()> {
    init_blocking_with(InitConfig::default())
}

/// Blocking form of [`init_with`].
pub fn init_blocking_with(config: InitConfig) -> Result<()> {
    block_on(do_init(config))
}

pub(crate) fn current() -> Option<Arc<Cluster>> {
    DRIVER.read().expect("driver lock").clone()
}

/// The connected driver; the first remote call of a program that never
/// called `init` starts one (like `ray.remote` calls auto-initialising).
pub(crate) fn driver_or_init() -> Result<Arc<Cluster>> {
    if let Some(d) = current() {
        return Ok(d);
    }
    init_blocking()?;
    current().ok_or_else(|| Error::Embedded("init did not connect".into()))
}

fn program_name() -> String {
    std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).unwrap_or_else(|| "program".into())
}

async fn do_init(config: InitConfig) -> Result<()> {
    let _guard = INIT.lock().await;
    if current().is_some() {
        return Ok(());
    }
    // /proc/self/exe is the running image even if the file was replaced.
    let exe = PathBuf::from("/proc/self/exe");
    let driver = if executor::is_executor() { connect_from_task(&exe).await? } else { connect_program(&config, &exe).await? };
    *DRIVER.write().expect("driver lock") = Some(driver);
    Ok(())
}

/// The content hash of the program binary (what the head knows it by).
async fn hash_program(exe: &Path) -> Result<String> {
    let exe = exe.to_path_buf();
    tokio::task::spawn_blocking(move || hash_file(&exe)).await.map_err(|e| Error::Io(std::io::Error::other(e)))?.map_err(Error::from)
}

/// A task submitting tasks: its session is a job of its own on the head
/// that runs this task (the worker said where, and which binary this is),
/// a child of the task's job; it ends when this executor process does.
async fn connect_from_task(exe: &Path) -> Result<Arc<Cluster>> {
    let address = config::resolve_address_env_only()
        .ok_or_else(|| Error::Config("this task's worker did not say where its head is (SHOAL_ADDRESS is not set)".into()))?;
    let token = config::resolve_token(None, None)?;
    let hash = match std::env::var(shoal_proto::ENV_BINARY_HASH) {
        Ok(h) if !h.is_empty() => h,
        _ => hash_program(exe).await?,
    };
    let parent: u32 = std::env::var("SHOAL_JOB_ID").ok().and_then(|j| j.parse().ok()).unwrap_or(0);
    let name = format!("tasks of a task of job {parent} (executor pid {})", std::process::id());
    Ok(Cluster::new(Driver::connect(&address, token, &hash, exe, &name, None, parent).await?, None))
}

/// A program's own session: with the head at `config`'s (or
/// `SHOAL_ADDRESS`'s) address, else with an embedded cluster it starts.
async fn connect_program(config: &InitConfig, exe: &Path) -> Result<Arc<Cluster>> {
    let hash = hash_program(exe).await?;
    let name = config.name.clone().unwrap_or_else(program_name);
    let address = match (&config.local, config.address.as_deref()) {
        (true, _) => None,
        // `auto` = the head recorded in the local session dir.
        (false, Some(a)) => Some(
            config::resolve_address(Some(a))
                .ok_or_else(|| Error::Config(format!("address {a:?}: no head session found in {}", config::shoal_home().display())))?,
        ),
        (false, None) => config::resolve_address_env_only(),
    };
    match address {
        Some(address) => {
            let token = config::resolve_token(config.token.as_deref(), config.token_file.as_deref())?;
            Ok(Cluster::new(Driver::connect(&address, token, &hash, exe, &name, None, 0).await?, None))
        }
        None => start_embedded(config, &hash, exe, &name).await,
    }
}

async fn start_embedded(config: &InitConfig, hash: &str, exe: &Path, name: &str) -> Result<Arc<Cluster>> {
    let home = config::shoal_home();
    let cache = config::binary_cache(&home);
    // The head and the worker share the binary cache: putting our own
    // executable there means nothing is uploaded or fetched.
    let store = BinaryStore::open(&cache)?;
    {
        let (store, hash, exe) = (store.clone(), hash.to_string(), exe.to_path_buf());
        tokio::task::spawn_blocking(move || store.copy_in(&hash, &exe)).await.map_err(|e| Error::Io(std::io::Error::other(e)))??;
    }
    let token = shoal_proto::auth::generate_token();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut hc = shoal_scheduler::HeadConfig::new(Some(token.clone()), cache.clone());
    hc.dashboard = embedded_dashboard(config, std::env::var(ENV_DASHBOARD).ok().as_deref())?;
    let head = shoal_scheduler::start(hc, listener).await?;
    let address = head.addr.to_string();
    // Like `ray.init()`: say once where to look (a one-time login link;
    // `shoal::dashboard_url()` makes another).
    if let Some(url) = head.dashboard_login_url("127.0.0.1") {
        eprintln!("shoal: local cluster dashboard at {url} ({ENV_DASHBOARD}=off turns it off)");
    }
    let mut wc = shoal_worker::WorkerConfig::new(address.clone(), Some(token.clone()), cache);
    // Worker and driver share the head's process: sessions over channels.
    wc.local_head = Some(head.local_link());
    if let Some(n) = config.num_cpus {
        wc.resources.cpus = n;
    }
    if let Some(spec) = &config.resources {
        let extra = ResourceSet::parse(spec).map_err(|e| Error::Config(e.to_string()))?;
        wc.resources.add(&ResourceSet { cpus: 0.0, custom: extra.custom });
    }
    // Only this process and its executors use the store: serve it on
    // loopback only.
    wc.object_listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    wc.spill_dir = home.join("spill").join(format!("embedded-{}", std::process::id()));
    let memory = wc.memory_bytes;
    let env_size = |var: &str| -> Result<Option<u64>> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => shoal_worker::config::parse_size(&v, memory).map(Some).map_err(|e| Error::Config(format!("{var}: {e}"))),
            _ => Ok(None),
        }
    };
    if let Some(n) = config.object_store_memory.or(env_size(shoal_worker::config::ENV_STORE_MEMORY)?) {
        wc.object_store_bytes = n;
    }
    wc.object_store_prefault =
        env_size(shoal_worker::config::ENV_PREFAULT)?.unwrap_or(shoal_worker::config::DEFAULT_EMBEDDED_PREFAULT).min(wc.object_store_bytes);
    let mut worker = shoal_worker::start(wc).await.map_err(|e| Error::Embedded(e.to_string()))?;
    let node = tokio::time::timeout(Duration::from_secs(10), worker.registered())
        .await
        .map_err(|_| Error::Embedded("the embedded worker did not register within 10s".into()))?
        .map_err(|e| Error::Embedded(e.to_string()))?;
    let local_store = crate::objects::LocalStore::InProcess { store: worker.store(), node };
    let driver = Cluster::new(Driver::connect(&address, Some(token), hash, exe, name, Some(head.local_link()), 0).await?, Some(local_store));
    tracing::debug!(%address, "embedded cluster started");
    *EMBEDDED.lock().expect("embedded lock") = Some(Embedded { head, worker });
    Ok(driver)
}

/// Disconnects from the cluster and stops the embedded one, if any.
/// Pending results fail with `Disconnected`. `init` may be called again.
pub async fn shutdown() {
    let driver = DRIVER.write().expect("driver lock").take();
    if let Some(d) = driver {
        d.close("shoal::shutdown() was called".into());
        let _ = runtime().spawn(async move { d.finish().await }).await;
    }
    let embedded = EMBEDDED.lock().expect("embedded lock").take();
    if let Some(e) = embedded {
        let _ = runtime()
            .spawn(async move {
                let _ = e.worker.shutdown().await;
                e.head.shutdown().await;
            })
            .await;
    }
}

/// Stores `value` in the cluster; returns a reference to pass to tasks
/// (each task then reads the stored copy instead of a fresh argument).
///
/// Small values (up to 100 KiB) are kept by the head. Larger ones are
/// written once into a node's shared-memory object store: straight into
/// it on an embedded cluster (one copy, at memory speed), streamed to the
/// nearest worker otherwise. A value that cannot fit even after spilling
/// fails with [`TaskError::ObjectStoreFull`]; nothing stored is lost.
pub fn put<T: Serialize>(value: T) -> Result<ObjectRef<T>> {
    let driver = driver_or_init()?;
    let (id, slot) = put_value(&driver, &value)?;
    Ok(ObjectRef::new(id, slot, Some(driver)))
}

/// Stores a serialized value; see [`put`].
pub(crate) fn put_value<T: Serialize + ?Sized>(driver: &Arc<Cluster>, value: &T) -> Result<(u64, Arc<Slot>)> {
    send_put(driver, prepare_put(driver, value)?)
}

/// [`put_value`] for a value whose encoded `size` (and the refs it holds,
/// `refs`) a size pass already found.
pub(crate) fn put_value_sized<T: Serialize + ?Sized>(
    driver: &Arc<Cluster>,
    value: &T,
    size: usize,
    refs: Vec<Arc<crate::object_ref::RefInner>>,
) -> Result<(u64, Arc<Slot>)> {
    send_put(driver, prepare_sized(driver, value, size, refs)?)
}

/// Tells the head of prepared put `p`; returns its id and done slot.
fn send_put(driver: &Arc<Cluster>, p: Prepared) -> Result<(u64, Arc<Slot>)> {
    driver.send(Out::Put(p.msg));
    let slot = Slot::done(Ok(p.val));
    driver.register(p.id, slot.clone());
    // The refs the value holds lived until its message was queued.
    drop(p.refs);
    Ok((p.id, slot))
}

/// A value encoded (into a node's store if large) under a fresh id, and
/// the message telling the head, not sent yet.
pub(crate) struct Prepared {
    pub(crate) id: u64,
    pub(crate) val: Val,
    pub(crate) msg: pb::PutObject,
    /// Refs the value holds: keep them until `msg` is queued.
    pub(crate) refs: Vec<Arc<crate::object_ref::RefInner>>,
}

/// Encodes `value` for a put or a generator's item.
pub(crate) fn prepare_put<T: Serialize + ?Sized>(driver: &Arc<Cluster>, value: &T) -> Result<Prepared> {
    let (size, refs) = crate::refs::collecting(|| postcard::experimental::serialized_size(value));
    let size = size.map_err(serialization_error::<T>)?;
    prepare_sized(driver, value, size, refs)
}

fn serialization_error<T: ?Sized>(e: postcard::Error) -> TaskError {
    TaskError::Serialization { message: format!("{} could not be serialized: {e}", std::any::type_name::<T>()) }
}

/// [`prepare_put`] past its size pass: `size` bytes encoded, holding `refs`.
fn prepare_sized<T: Serialize + ?Sized>(driver: &Arc<Cluster>, value: &T, size: usize, refs: Vec<Arc<crate::object_ref::RefInner>>) -> Result<Prepared> {
    let ser = serialization_error::<T>;
    let contains = crate::refs::ids_on(driver, &refs, "the value")?;
    if !contains.is_empty() {
        driver.mark_unsynced();
    }
    let id = driver.next_id();
    let (val, msg) = if size <= shoal_domain::limits::STORE_THRESHOLD_BYTES {
        let bytes = bytes::Bytes::from(postcard::to_allocvec(value).map_err(ser)?);
        (Val::Inline(bytes.clone()), pb::PutObject { id, value: bytes, contains, ..Default::default() })
    } else {
        crate::objects::put_large(driver, id, size as u64, contains, |buf| postcard::to_slice(value, buf).map(|_| ()).map_err(|e| ser(e).to_string()))?
    };
    Ok(Prepared { id, val, msg, refs })
}

/// Cancels the task that makes `r`: if queued it never starts; if running
/// its executor process is ended. Either way `r` yields
/// `TaskError::Cancelled` (unless the task had already finished).
pub fn cancel<T>(r: &ObjectRef<T>) {
    r.cancel();
}

/// Nodes, resources and task counts of the connected cluster (the same
/// data as `shoal status`).
pub async fn cluster_status() -> Result<ClusterStatus> {
    let d = current().ok_or_else(|| Error::Config("shoal::init() has not been called".into()))?;
    let (address, token) = (d.address.clone(), d.token.clone());
    runtime().spawn(async move { crate::status::fetch(&address, token.as_deref()).await }).await.map_err(|e| Error::Embedded(e.to_string()))?
}

/// A one-time login link to the connected cluster's dashboard (an
/// embedded cluster's, or the head's); fails with the head's reason if it
/// serves none.
pub async fn dashboard_url() -> Result<String> {
    let d = current().ok_or_else(|| Error::Config("shoal::init() has not been called".into()))?;
    let (address, token) = (d.address.clone(), d.token.clone());
    runtime().spawn(async move { crate::status::dashboard_login(&address, token.as_deref()).await }).await.map_err(|e| Error::Embedded(e.to_string()))?
}

/// Blocking form of [`cluster_status`], for programs without an async
/// runtime.
pub fn cluster_status_blocking() -> Result<ClusterStatus> {
    let d = current().ok_or_else(|| Error::Config("shoal::init() has not been called".into()))?;
    let (address, token) = (d.address.clone(), d.token.clone());
    block_on(async move { crate::status::fetch(&address, token.as_deref()).await })
}

/// Runs an async `main` on a multi-threaded runtime (used by `#[shoal::main]`).
pub fn run_main<F: std::future::Future>(fut: F) -> F::Output {
    enter_main();
    let out = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("building the main runtime").block_on(fut);
    // Leave the cluster cleanly: the head ends the job at once instead of
    // waiting for a driver that lost its connection to come back.
    block_on(shutdown());
    out
}

/// Called at the top of a `#[shoal::main]` program. Executor processes
/// never get here (they enter the task loop before `main`); this only
/// guards against a misconfigured executor environment.
pub fn enter_main() {
    if executor::is_executor() {
        eprintln!("shoal: an executor process reached main(); exiting");
        std::process::exit(3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_dashboard_is_on_loopback_unless_placed_or_turned_off() {
        let none = InitConfig::default();
        let free = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(embedded_dashboard(&none, None).unwrap(), free);
        assert_eq!(embedded_dashboard(&none, Some(" ")).unwrap(), free);
        assert_eq!(embedded_dashboard(&none, Some("OFF")).unwrap(), None);
        assert_eq!(embedded_dashboard(&none, Some("0")).unwrap(), free, "port 0: a free one, as --dashboard-port 0");
        assert_eq!(embedded_dashboard(&none, Some("8265")).unwrap(), Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8265))));
        assert_eq!(embedded_dashboard(&none, Some("0.0.0.0:9000")).unwrap(), Some("0.0.0.0:9000".parse().unwrap()));
        let e = embedded_dashboard(&none, Some("somewhere")).unwrap_err();
        assert!(e.to_string().contains("SHOAL_DASHBOARD"), "{e}");
        assert_eq!(embedded_dashboard(&InitConfig::default().no_dashboard(), Some("8265")).unwrap(), None, "the program's choice wins");
        let at: std::net::SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(embedded_dashboard(&InitConfig::default().dashboard(at), Some("off")).unwrap(), Some(at));
    }
}
