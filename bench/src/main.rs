//! Shoal's benchmark: the workloads of `bench/anchors` (same metric keys,
//! so `bench/compare` can put Shoal beside Ray, Dask and multiprocessing),
//! plus Shoal-only ones. Prints one JSON object.
//!
//!     cargo run --release -p shoal-bench                  # embedded cluster
//!     cargo run --release -p shoal-bench -- --address H:P # a CLI-started cluster

use clap::Parser;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Head address; default: an embedded local cluster.
    #[arg(long)]
    address: Option<String>,
    /// Cluster token (default: SHOAL_TOKEN / the local session).
    #[arg(long)]
    token: Option<String>,
    /// Tasks in the async throughput workload.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Skip the 1M-queued-tasks head memory workload.
    #[arg(long)]
    skip_rss: bool,
    /// Internal: submit this many no-ops to the head at ADDRESS and report
    /// when the head has them all queued.
    #[arg(long, hide = true)]
    rss_probe: Option<usize>,
    /// Simulated cluster sizes for the head dispatch workload (nodes).
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    sim_nodes: Vec<usize>,
    /// Tasks in the simulated-nodes workload.
    #[arg(long, default_value_t = 1_000_000)]
    sim_tasks: usize,
    /// Skip the simulated-nodes workload.
    #[arg(long)]
    skip_sim: bool,
    /// Internal: act as this many simulated worker nodes of the head at ADDRESS.
    #[arg(long, hide = true)]
    sim_worker: Option<usize>,
    /// Internal: submit this many no-ops to the head at ADDRESS, print the rate.
    #[arg(long, hide = true)]
    sim_driver: Option<usize>,
    /// Skip the nested-task and generator workloads (a head and two
    /// 1-CPU worker processes, as Ray's model script runs them).
    #[arg(long)]
    skip_model: bool,
    /// Skip the second run of the model workloads on an `--insecure`
    /// cluster (no encryption), the `*_plain` keys.
    #[arg(long)]
    skip_plain: bool,
    /// Skip the third run of the model workloads with task events and the
    /// dashboard off (`--task-events 0 --no-dashboard`), the `*_obsoff` keys.
    #[arg(long)]
    skip_obsoff: bool,
    /// Internal: run the model workloads against the head at ADDRESS.
    #[arg(long, hide = true)]
    model_probe: bool,
    /// Runs of each model workload (the median is reported).
    #[arg(long, default_value_t = 5)]
    model_runs: usize,
    /// Only the head-memory workload (idle, 1M queued, after the job).
    #[arg(long)]
    only_rss: bool,
    /// Only the model-cluster workloads (default, then plain unless
    /// --skip-plain, then observability off unless --skip-obsoff), e.g.
    /// to compare encryption or observability on and off.
    #[arg(long)]
    only_model: bool,
    /// Only the embedded actor workloads (to profile them), `runs` times.
    #[arg(long)]
    only_actors: Option<usize>,
    /// Only the embedded no-op throughput (W1), `runs` times in a row from
    /// the start, each run's figure printed (to study its spread).
    #[arg(long)]
    only_noops: Option<usize>,
    /// Start measuring at once after the first task, while an embedded
    /// store's pre-fault (256 MiB, about half a second of CPU on these
    /// machines) may still run beside the workloads.
    #[arg(long)]
    no_settle: bool,
}

/// Ray's model benchmark's actor: a counter.
pub struct Counter {
    n: u64,
}

#[shoal::actor]
impl Counter {
    fn new(n: u64) -> Self {
        Counter { n }
    }

    fn incr(&mut self, k: u64) -> u64 {
        self.n += k;
        self.n
    }
}

/// The median of `n` timings of `call`, in microseconds.
fn median_roundtrip_us<T>(n: usize, mut call: impl FnMut() -> T) -> f64 {
    let mut lat: Vec<f64> = (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(call());
            t.elapsed().as_secs_f64()
        })
        .collect();
    if std::env::var_os("SHOAL_BENCH_LAT").is_some() {
        let s: Vec<String> = lat.chunks(50).map(|c| format!("{:.0}", c.iter().sum::<f64>() / c.len() as f64 * 1e6)).collect();
        eprintln!("latency by 50s (us): {}", s.join(" "));
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    lat[lat.len() / 2] * 1e6
}

/// Actors as Ray's model script measures them: one counter, created and
/// called once first; 500 sequential round trips (median); 10,000 calls in
/// flight, then wait for all (median of `runs`). Keys get `prefix`.
fn actor_calls(out: &mut Map<String, Value>, prefix: &str, runs: usize) {
    let c = Counter::remote(0);
    c.incr(0).get().unwrap();
    // SHOAL_BENCH_ACTOR_CALLS=N: N round trips instead of 500 (to profile).
    let n = std::env::var("SHOAL_BENCH_ACTOR_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    out.insert(format!("{prefix}actor_call_roundtrip_median_us"), round(median_roundtrip_us(n, || c.incr(1).get().unwrap())));
    let (m, spread) = model::timed(runs, || {
        let t = Instant::now();
        let refs: Vec<_> = (0..10_000).map(|_| c.incr(1)).collect();
        let sent = t.elapsed();
        shoal::get_all_blocking(&refs).unwrap();
        if std::env::var_os("SHOAL_BENCH_LAT").is_some() {
            eprintln!("10,000 calls: sent in {sent:?}, all back after {:?}", t.elapsed());
        }
    });
    out.insert(format!("{prefix}actor_calls_async_per_s"), round(10_000.0 / m));
    out.insert(format!("{prefix}actor_calls_async_spread"), round(spread));
    shoal::kill(&c);
}

/// One task submits `n` no-ops from inside itself and waits for them.
#[shoal::remote]
fn fanout(n: u64) -> u64 {
    let refs: Vec<_> = (0..n).map(|_| noop::remote()).collect();
    shoal::get_all_blocking(&refs).unwrap().len() as u64
}

/// A generator of `n` small items.
#[shoal::remote]
fn items(n: u64) -> impl Iterator<Item = u64> {
    0..n
}

#[shoal::remote]
fn noop() {}

#[shoal::remote]
fn noop_item(_i: u64) {}

#[shoal::remote]
fn ident(i: u64) -> u64 {
    i
}

#[shoal::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[shoal::remote]
fn nbytes(x: shoal::Buffer) -> usize {
    x.len()
}

#[shoal::remote]
fn passthrough(x: shoal::Buffer) -> shoal::Buffer {
    x
}

/// `mib` MiB of ones (an object for the transfer workload).
#[shoal::remote]
fn ones(mib: usize) -> shoal::Buffer {
    shoal::Buffer::from(vec![1u8; mib << 20])
}

#[shoal::remote]
fn spin(ms: u64) -> u64 {
    let end = Instant::now() + Duration::from_millis(ms);
    let mut x = 0u64;
    while Instant::now() < end {
        x = x.wrapping_add(1);
    }
    x
}

fn round(v: f64) -> Value {
    json!((v * 10_000.0).round() / 10_000.0)
}

fn init(args: &Args) -> shoal::Result<()> {
    let mut cfg = shoal::InitConfig::default();
    if let Some(a) = &args.address {
        cfg = cfg.address(a.clone());
    } else {
        cfg = cfg.local();
    }
    if let Some(t) = &args.token {
        cfg = cfg.token(t.clone());
    }
    shoal::init_blocking_with(cfg)
}

/// memcpy of 256 MiB into warm (pre-faulted) memory: the ceiling for `put`.
/// One loopback TCP stream's throughput (what iperf3 measures): 1 GiB
/// written by one thread, read by another, best of 3.
fn raw_tcp_gbps() -> f64 {
    use std::io::{Read, Write};
    const TOTAL: usize = 1 << 30;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let Ok(l) = std::net::TcpListener::bind("127.0.0.1:0") else { return 0.0 };
        let Ok(addr) = l.local_addr() else { return 0.0 };
        let reader = std::thread::spawn(move || {
            let (mut s, _) = l.accept().ok()?;
            let mut buf = vec![0u8; 4 << 20];
            let mut got = 0;
            let t = Instant::now();
            while got < TOTAL {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got += n,
                }
            }
            Some(t.elapsed().as_secs_f64())
        });
        let buf = vec![1u8; 4 << 20];
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            for _ in 0..TOTAL / buf.len() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
        if let Ok(Some(secs)) = reader.join() {
            best = best.min(secs);
        }
    }
    if best == f64::MAX { 0.0 } else { TOTAL as f64 / best / 1e9 }
}

fn memcpy_gbps(src: &[u8]) -> f64 {
    let mut dst = vec![1u8; src.len()];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    src.len() as f64 / best / 1e9
}

fn main() {
    let args = Args::parse();
    if let Some(n) = args.rss_probe {
        return rss_probe(&args, n);
    }
    if let Some(n) = args.sim_worker {
        return sim::worker(&args, n);
    }
    if let Some(n) = args.sim_driver {
        return sim::driver(&args, n);
    }
    if args.model_probe {
        return model::probe(&args);
    }
    if args.only_rss {
        let mut out = Map::new();
        queued_head_rss().unwrap_or_else(|e| panic!("head memory workload: {e}")).insert(&mut out);
        println!("{}", Value::Object(out));
        return;
    }
    if args.only_model {
        let out = model::run_variants(args.model_runs, !args.skip_plain, !args.skip_obsoff).unwrap_or_else(|e| panic!("model workloads: {e}"));
        println!("{}", Value::Object(out));
        return;
    }
    let mut out = Map::new();
    let t0 = Instant::now();
    init(&args).expect("connecting to the cluster");
    noop::remote().get().unwrap();
    out.insert("startup_to_first_task_s".into(), round(t0.elapsed().as_secs_f64()));
    if args.address.is_none() && !args.no_settle {
        // The embedded store pre-faults its first 256 MiB in the background
        // (idle CPU only); measured beside it, a workload's first run loses
        // up to half its throughput (--only-noops: 128k-170k tasks/s with
        // it, 265k-353k without). Ray's and Dask's figures likewise follow
        // their own start-up.
        std::thread::sleep(Duration::from_millis(1500));
    }
    if let Some(runs) = args.only_noops {
        let n = args.tasks;
        let each: Vec<Value> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                let refs: Vec<_> = (0..n).map(|_| noop::remote()).collect();
                shoal::get_all_blocking(&refs).unwrap();
                round(n as f64 / t.elapsed().as_secs_f64())
            })
            .collect();
        out.insert("noop_async_tasks_per_s_each".into(), Value::Array(each));
        println!("{}", Value::Object(out));
        return;
    }
    if let Some(runs) = args.only_actors {
        actor_calls(&mut out, "", runs);
        println!("{}", Value::Object(out));
        return;
    }

    // W1: async throughput.
    let n = args.tasks;
    let t = Instant::now();
    let refs: Vec<_> = (0..n).map(|_| noop::remote()).collect();
    shoal::get_all_blocking(&refs).unwrap();
    out.insert("noop_async_tasks_per_s".into(), round(n as f64 / t.elapsed().as_secs_f64()));
    drop(refs);

    // W2: sync round trip.
    out.insert("roundtrip_median_us".into(), round(median_roundtrip_us(500, || noop::remote().get().unwrap())));

    // W2b: actor calls, as Ray's model script makes them.
    actor_calls(&mut out, "", 5);

    // W3: tree reduction, 4096 leaves.
    let t = Instant::now();
    let mut level: Vec<_> = (0..4096u64).map(ident::remote).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| add::remote(&p[0], &p[1])).collect();
    }
    assert_eq!(level[0].get().unwrap(), 4095 * 4096 / 2);
    out.insert("tree_reduce_8191_tasks_s".into(), round(t.elapsed().as_secs_f64()));

    // W4: put / get / task on a 256 MiB buffer (np.ones in the anchors),
    // each as the anchors measure it (bench/anchors: the same reps).
    objects(&mut out);

    // W5: CPU-bound efficiency, 200 x 10 ms on the cluster's CPUs.
    let t = Instant::now();
    let refs: Vec<_> = (0..200).map(|_| spin::remote(10)).collect();
    shoal::get_all_blocking(&refs).unwrap();
    let rt = tokio_rt();
    let cpus = rt.block_on(shoal::cluster_status()).unwrap().total_cpus();
    let ideal = 200.0 * 0.010 / cpus.max(1.0);
    out.insert("cpu_200x10ms_efficiency".into(), round(ideal / t.elapsed().as_secs_f64()));

    // Pool::map of a no-op: 200k items in chunks of 1,000 as mp's
    // `pool.map(noop, range(200_000), chunksize=1000)` (median of 5), and
    // 1M items with Shoal's automatic chunking (Shoal only).
    let pool = shoal::Pool::all().unwrap().chunksize(1000);
    let rates = reps(REPS, || {
        let t = Instant::now();
        assert_eq!(pool.map(noop_item::func, 0..200_000u64).unwrap().len(), 200_000);
        200_000.0 / t.elapsed().as_secs_f64()
    });
    put_stats(&mut out, "pool_map_noop_200k_chunk1000_items_per_s", rates);
    let pool = shoal::Pool::all().unwrap();
    let t = Instant::now();
    let out_items = pool.map(noop_item::func, 0..1_000_000u64).unwrap();
    assert_eq!(out_items.len(), 1_000_000);
    out.insert("pool_map_noop_1M_items_per_s".into(), round(1e6 / t.elapsed().as_secs_f64()));

    if !args.skip_rss && args.address.is_none() {
        match queued_head_rss() {
            Ok(rss) => rss.insert(&mut out),
            Err(e) => {
                out.insert("noop_1M_queued_head_rss_error".into(), json!(e));
            }
        }
    }
    if !args.skip_model && args.address.is_none() {
        match model::run_variants(args.model_runs, !args.skip_plain, !args.skip_obsoff) {
            Ok(m) => out.extend(m),
            Err(e) => {
                out.insert("model_error".into(), json!(e));
            }
        }
    }
    if !args.skip_sim && args.address.is_none() {
        for &n in &args.sim_nodes {
            match sim::run(n, args.sim_tasks) {
                Ok(rate) => out.insert(format!("sim_{n}_nodes_dispatch_tasks_per_s"), round(rate)),
                Err(e) => out.insert(format!("sim_{n}_nodes_error"), json!(e)),
            };
        }
    }
    let mut all = Map::new();
    all.insert("system".into(), json!(format!("shoal {}", env!("CARGO_PKG_VERSION"))));
    all.extend(out);
    println!("{}", Value::Object(all));
}

/// Repetitions of each object workload (the anchors use the same).
const REPS: usize = 5;

/// `n` samples of `f`, sorted.
fn reps(n: usize, mut f: impl FnMut() -> f64) -> Vec<f64> {
    let mut v: Vec<f64> = (0..n.max(1)).map(|_| f()).collect();
    if std::env::var_os("SHOAL_BENCH_RUNS").is_some() {
        eprintln!("reps: {v:?}");
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// `n` timings of `f` in seconds, sorted.
fn seconds(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    reps(n, || {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    })
}

/// Inserts the median of sorted `samples` as `key`, and `key_min`,
/// `key_max` (the key's unit suffix kept last: `put_GBps` ->
/// `put_min_GBps`), as the anchors report them.
fn put_stats(out: &mut Map<String, Value>, key: &str, samples: Vec<f64>) {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return };
    let (stem, unit) = key.rsplit_once('_').unwrap_or((key, ""));
    let unit = if stem.ends_with("_per") { "per_s" } else { unit };
    let stem = stem.strip_suffix("_per").unwrap_or(stem);
    out.insert(key.into(), significant(samples[samples.len() / 2]));
    out.insert(format!("{stem}_min_{unit}"), significant(*first));
    out.insert(format!("{stem}_max_{unit}"), significant(*last));
}

/// `v` to 5 significant digits (a get's latency is microseconds: four
/// decimals of a second would round it to 0).
fn significant(v: f64) -> Value {
    json!(format!("{v:.4e}").parse::<f64>().unwrap_or(v))
}

/// Waits (up to 5 s) until no node's store holds anything: what a test
/// dropped is freed before the next one.
fn wait_stores_empty() {
    let rt = tokio_rt();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && rt.block_on(shoal::cluster_status()).map(|s| s.nodes.iter().map(|n| n.store.used).sum::<u64>() > 0).unwrap_or(false) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The object workloads on 256 MiB of ones, as the anchors run them:
/// - `put_256MiB_cold_GBps`: the first put of the program (one sample);
/// - `put_256MiB_GBps`: warm, after that one was freed: median of 5
///   (each freed before the next);
/// - `get_16MiB_s`, `get_256MiB_s`: a get's latency (zero-copy: a lookup
///   and a mapping, so seconds, not GB/s), median of 5;
/// - `task_on_256MiB_arg_s`: a task given the stored object by reference;
/// - `task_on_256MiB_byvalue_s`: a task given the buffer itself (it
///   travels with the call, as Ray's implicit put and mp's pickling do);
/// - `task_returning_256MiB_s` (Shoal only): a task returning its
///   256 MiB argument.
fn objects(out: &mut Map<String, Value>) {
    let buf = shoal::Buffer::from(vec![1u8; 256 << 20]);
    let gb = buf.len() as f64 / 1e9;
    out.insert("memcpy_256MiB_GBps".into(), round(memcpy_gbps(&buf)));
    let t = Instant::now();
    match shoal::put(buf.clone()) {
        Ok(r) => {
            out.insert("put_256MiB_cold_GBps".into(), round(gb / t.elapsed().as_secs_f64()));
            drop(r);
        }
        Err(e) => {
            out.insert("put_256MiB_error".into(), json!(e.to_string()));
            return;
        }
    }
    wait_stores_empty();
    let puts = reps(REPS, || {
        let t = Instant::now();
        let r = shoal::put(buf.clone()).unwrap();
        let s = t.elapsed().as_secs_f64();
        drop(r);
        wait_stores_empty();
        gb / s
    });
    put_stats(out, "put_256MiB_GBps", puts);
    let r = shoal::put(buf.clone()).unwrap();
    let small = shoal::put(buf.slice(..16 << 20)).unwrap();
    put_stats(out, "get_256MiB_s", seconds(REPS, || assert_eq!(r.get().unwrap().len(), buf.len())));
    put_stats(out, "get_16MiB_s", seconds(REPS, || assert_eq!(small.get().unwrap().len(), 16 << 20)));
    put_stats(out, "task_on_256MiB_arg_s", seconds(REPS, || assert_eq!(nbytes::remote(&r).get().unwrap(), buf.len())));
    put_stats(out, "task_on_256MiB_byvalue_s", seconds(REPS, || assert_eq!(nbytes::remote(buf.clone()).get().unwrap(), buf.len())));
    // The result is encoded straight into the store; timed until it is
    // there (not read back).
    put_stats(
        out,
        "task_returning_256MiB_s",
        seconds(REPS, || {
            let back = passthrough::remote(&r);
            assert_eq!(shoal::wait_blocking(std::slice::from_ref(&back), 1, None).0.len(), 1);
        }),
    );
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// Starts a head process (no local worker) in a fresh session dir; returns
/// it with its address and token.
fn start_head(extra: &[&str]) -> Result<(std::process::Child, tempfile::TempDir, String, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let shoal_bin = exe.with_file_name("shoal");
    if !shoal_bin.exists() {
        return Err(format!("{} not found: build it with `cargo build --release`", shoal_bin.display()));
    }
    let home = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut head = std::process::Command::new(&shoal_bin)
        .args(["start", "--head", "--block", "--port", "0", "--bind", "127.0.0.1", "--num-cpus", "0", "--dashboard-port", "0"])
        .args(extra)
        // An A/B of head settings: e.g. SHOAL_BENCH_HEAD_ARGS="--task-events 0 --no-dashboard".
        .args(std::env::var("SHOAL_BENCH_HEAD_ARGS").unwrap_or_default().split_whitespace())
        .env("SHOAL_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(b) = std::fs::read(home.path().join("head.json"))
            && let Ok(v) = serde_json::from_slice::<Value>(&b)
        {
            let address = v["address"].as_str().unwrap_or_default().to_string();
            // No token file: an `--insecure` head.
            let token = std::fs::read_to_string(home.path().join("token")).map(|t| t.trim().to_string()).unwrap_or_default();
            return Ok((head, home, address, token));
        }
        if Instant::now() > deadline {
            let _ = head.kill();
            return Err("head did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The head's memory: idle, at the peak of a job of 1M no-ops queued by a
/// driver process on a head with no workers, and
/// once it has settled after that job ended and after a second one like it
/// (the same figure twice: what stays is bounded, not growing per job).
fn queued_head_rss() -> Result<HeadRss, String> {
    let (mut head, _home, address, token) = start_head(&[])?;
    let pid = head.id();
    let status_kb = |field: &str| -> Result<f64, String> {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
        st.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).ok_or(format!("no {field}"))
    };
    // Freed memory goes back over several seconds (the log deleting the
    // job's records, the allocator's decay, the head's later trims): the
    // figure once it held for 3 s running, 2 to 30 s after the job.
    let settled = || -> Result<f64, String> {
        std::thread::sleep(Duration::from_secs(1));
        let (mut last, mut held) = (status_kb("VmRSS:")?, 0);
        for _ in 0..29 {
            std::thread::sleep(Duration::from_secs(1));
            let now = status_kb("VmRSS:")?;
            held = if (now - last).abs() < 256.0 { held + 1 } else { 0 };
            last = now;
            if held == 3 {
                break;
            }
        }
        Ok(last)
    };
    let job = || -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let status =
            std::process::Command::new(&exe).args(["--rss-probe", "1000000", "--address", &address, "--token", &token]).status().map_err(|e| e.to_string())?;
        if status.success() { Ok(()) } else { Err(format!("probe failed: {status}")) }
    };
    let result = (|| {
        std::thread::sleep(Duration::from_millis(300));
        let idle = status_kb("VmRSS:")?;
        job()?;
        let peak = status_kb("VmHWM:")?;
        // The probe exited: its job ends and its tasks go.
        let after = settled()?;
        job()?;
        let after_second = settled()?;
        Ok(HeadRss { idle: idle / 1024.0, peak: peak / 1024.0, after: after / 1024.0, after_second: after_second / 1024.0 })
    })();
    let _ = head.kill();
    let _ = head.wait();
    result
}

/// What [`queued_head_rss`] measures, in MiB.
struct HeadRss {
    idle: f64,
    peak: f64,
    after: f64,
    after_second: f64,
}

impl HeadRss {
    fn insert(&self, out: &mut Map<String, Value>) {
        out.insert("head_idle_rss_mb".into(), round(self.idle));
        out.insert("noop_1M_queued_head_rss_mb".into(), round(self.peak));
        out.insert("head_rss_after_1M_job_mb".into(), round(self.after));
        out.insert("head_rss_after_2nd_1M_job_mb".into(), round(self.after_second));
    }
}

fn rss_probe(args: &Args, n: usize) {
    init(args).expect("connecting to the head");
    let refs: Vec<_> = (0..n).map(|_| noop::remote()).collect();
    let rt = tokio_rt();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = rt.block_on(shoal::cluster_status()).unwrap();
        if st.tasks.queued as usize >= n {
            break;
        }
        assert!(Instant::now() < deadline, "head queued only {} of {n}", st.tasks.queued);
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(refs);
    // A clean end: the job ends now, not after the head's driver grace.
    rt.block_on(shoal::shutdown());
}

/// The workloads of Ray's model script that Shoal has, on the same shape
/// of cluster: a head and two worker processes of one CPU each (resources
/// `a` and `b`), and the driver a separate process. Each is warmed up as
/// the script does, then run `runs` times: the median, and the spread.
mod model {
    use super::*;

    /// The model workloads with encryption on (the default; keys
    /// `model_*` and the anchors' own) and, when `plain`, again on an
    /// `--insecure` cluster (no token, no TLS; the same keys with
    /// `_plain`), so one run shows what encryption costs.
    /// The model workloads on the default cluster, then (each in a
    /// cluster of its own, in the same sitting) `--insecure` (keys
    /// `*_plain`: what encryption costs) and with task events and the
    /// dashboard off (keys `*_obsoff`: what observability costs).
    pub fn run_variants(runs: usize, plain: bool, obsoff: bool) -> Result<Map<String, Value>, String> {
        let mut out = run(runs, &[], &[])?;
        if plain {
            for (k, v) in run(runs, &["--insecure"], &[])? {
                out.insert(format!("{k}_plain"), v);
            }
        }
        if obsoff {
            for (k, v) in run(runs, &["--task-events", "0", "--no-dashboard"], &[])? {
                out.insert(format!("{k}_obsoff"), v);
            }
        }
        // The two workers share this machine, so their pulls copy from each
        // other's memory; streamed over their ports as between hosts:
        for (k, v) in run(runs, &[], &[("SHOAL_MAP_PEER_STORES", "0")])? {
            if let Some(rest) = k.strip_prefix("transfer_256MiB_between_nodes") {
                out.insert(format!("transfer_256MiB_between_nodes_network{rest}"), v);
            }
        }
        out.insert("raw_tcp_loopback_GBps".into(), round(raw_tcp_gbps()));
        Ok(out)
    }

    fn run(runs: usize, head_args: &[&str], worker_env: &[(&str, &str)]) -> Result<Map<String, Value>, String> {
        let insecure = head_args.contains(&"--insecure");
        let (mut head, home, address, token) = start_head(head_args)?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let shoal_bin = exe.with_file_name("shoal");
        let mut workers = Vec::new();
        let mut homes = Vec::new();
        for res in ["a=1", "b=1"] {
            let wh = tempfile::tempdir().map_err(|e| e.to_string())?;
            let mut cmd = std::process::Command::new(&shoal_bin);
            cmd.args(["start", "--block", "--address", &address]);
            if !insecure {
                cmd.arg("--token-file").arg(home.path().join("token"));
            }
            let child = cmd
                .env_remove("SHOAL_TOKEN")
                .env_remove("SHOAL_TOKEN_FILE")
                // 1 GiB stores as in Ray's script; not prefaulted, so no
                // page clearing competes with the measured runs (these
                // workloads never touch the stores).
                .args(["--num-cpus", "1", "--resources", res, "--object-store-memory", "1GiB", "--object-store-prefault", "0"])
                .env("SHOAL_HOME", wh.path())
                .envs(worker_env.iter().copied())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            workers.push(child);
            homes.push(wh);
        }
        let result = (|| {
            let mut probe = std::process::Command::new(&exe);
            probe.args(["--model-probe", "--address", &address, "--model-runs", &runs.to_string()]);
            // Only what is passed here: no token from the environment.
            probe.env("SHOAL_HOME", home.path()).env_remove("SHOAL_TOKEN").env_remove("SHOAL_TOKEN_FILE");
            if !insecure {
                probe.args(["--token", &token]);
            }
            let out = probe.output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("model probe failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(Value::Object(m)) => Ok(m),
                _ => Err("model probe printed no JSON object".into()),
            }
        })();
        for mut w in workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = head.kill();
        let _ = head.wait();
        result
    }

    /// Median and (max - min) / median of `runs` timings of `f`.
    pub fn timed(runs: usize, f: impl FnMut()) -> (f64, f64) {
        let v = seconds(runs, f);
        let median = v[v.len() / 2];
        (median, (v[v.len() - 1] - v[0]) / median)
    }

    pub fn probe(args: &Args) {
        init(args).expect("connecting to the head");
        let rt = tokio_rt();
        let deadline = Instant::now() + Duration::from_secs(30);
        while rt.block_on(shoal::cluster_status()).map(|s| s.alive_nodes().count()).unwrap_or(0) < 2 {
            assert!(Instant::now() < deadline, "the two workers did not join");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = Map::new();
        // Warm-up as Ray's script does: one small fan-out first.
        assert_eq!(fanout::remote(10).get().unwrap(), 10);
        let fanout_once = || assert_eq!(fanout::remote(1000).get().unwrap(), 1000);
        let stream_once = || {
            let n = items::remote(10_000).filter(|r| r.as_ref().ok().and_then(|r| r.get().ok()).is_some()).count();
            assert_eq!(n, 10_000);
        };
        // An object moving between the two workers' stores, as Ray's
        // script has it: 256 MiB made on `a`, read by a task on `b`, timed
        // from the read's submission (the first move untimed, as Ray's).
        let move_once = || {
            let made = ones::options().resources(&[("a", 1.0)]).remote(256);
            let _ = shoal::wait_blocking(std::slice::from_ref(&made), 1, None);
            let t = Instant::now();
            assert_eq!(nbytes::options().resources(&[("b", 1.0)]).remote(&made).get().unwrap(), 256 << 20);
            t.elapsed().as_secs_f64()
        };
        // SHOAL_BENCH_PROFILE=fanout:N, streaming:N or transfer:N: only N runs of that
        // workload, each run's time printed (to profile it: perf record
        // the head, the workers' executors and this probe meanwhile).
        if let Ok(v) = std::env::var("SHOAL_BENCH_PROFILE") {
            let (what, n) = v
                .split_once(':')
                .and_then(|(w, n)| Some((w, n.parse::<usize>().ok()?)))
                .unwrap_or_else(|| panic!("SHOAL_BENCH_PROFILE={v}: want fanout:N, streaming:N or transfer:N"));
            let times = match what {
                "fanout" => seconds(n, fanout_once),
                "streaming" => seconds(n, stream_once),
                "transfer" => (0..n).map(|_| move_once()).collect(),
                _ => panic!("SHOAL_BENCH_PROFILE: no workload {what:?} (fanout, streaming or transfer)"),
            };
            out.insert(format!("profile_{what}_ms"), times.iter().map(|s| round(s * 1e3)).collect());
            println!("{}", Value::Object(out));
            return;
        }
        let (m, spread) = timed(args.model_runs, fanout_once);
        out.insert("nested_fanout_1000_s".into(), round(m));
        out.insert("nested_fanout_1000_spread".into(), round(spread));
        let (m, spread) = timed(args.model_runs, stream_once);
        out.insert("streaming_10k_items_s".into(), round(m));
        out.insert("streaming_10k_items_spread".into(), round(spread));
        actor_calls(&mut out, "model_", args.model_runs);
        // The same path for a plain no-op task, for comparison.
        out.insert("model_task_roundtrip_median_us".into(), round(median_roundtrip_us(500, || noop::remote().get().unwrap())));
        // No-op throughput through the head and both worker processes
        // (SHOAL_BENCH_NOOPS: a longer run, for a steadier figure).
        let noops: usize = std::env::var("SHOAL_BENCH_NOOPS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let (m, spread) = timed(args.model_runs, || {
            let refs: Vec<_> = (0..noops).map(|_| noop::remote()).collect();
            shoal::get_all_blocking(&refs).unwrap();
        });
        out.insert("model_noop_tasks_per_s".into(), round(noops as f64 / m));
        out.insert("model_noop_tasks_spread".into(), round(spread));
        // A longer run of the same, steadier: what the A/B rows compare.
        let (m, spread) = timed(args.model_runs, || {
            let refs: Vec<_> = (0..200_000).map(|_| noop::remote()).collect();
            shoal::get_all_blocking(&refs).unwrap();
        });
        out.insert("model_noop_200k_tasks_per_s".into(), round(200_000.0 / m));
        out.insert("model_noop_200k_tasks_spread".into(), round(spread));
        // The transfer (`move_once` above). Ray reports its best of 3; here
        // the median of `runs` with min/max.
        move_once();
        put_stats(&mut out, "transfer_256MiB_between_nodes_s", reps(args.model_runs.max(3), move_once));
        println!("{}", Value::Object(out));
    }
}

/// The head serving many simulated worker nodes: fake workers that speak
/// the real worker protocol (register, grant credits, heartbeat) and answer
/// every dispatch at once, spread over a few processes; a real driver
/// submits no-op tasks and waits for all results. Measures the head's
/// dispatch rate as the cluster grows.
mod sim {
    use super::*;
    use shoal_proto::pb::{self, WorkerToHead};
    use tokio_stream::wrappers::UnboundedReceiverStream;

    /// Credits each simulated node keeps open.
    const CREDITS: u32 = 64;

    pub fn run(nodes: usize, tasks: usize) -> Result<f64, String> {
        let (mut head, _home, address, token) = start_head(&["--heartbeat-timeout", "60"])?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let procs = nodes.clamp(1, 4);
        let mut sims = Vec::new();
        for p in 0..procs {
            let n = nodes / procs + usize::from(p < nodes % procs);
            let child = std::process::Command::new(&exe)
                .args(["--sim-worker", &n.to_string(), "--address", &address, "--token", &token])
                .stdout(std::process::Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            sims.push(child);
        }
        let result = (|| {
            let rt = tokio_rt();
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let alive = rt.block_on(shoal::status::fetch(&address, Some(&token))).map(|s| s.alive_nodes().count()).unwrap_or(0);
                if alive >= nodes {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("only {alive} of {nodes} simulated nodes registered"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let out = std::process::Command::new(&exe)
                .args(["--sim-driver", &tasks.to_string(), "--address", &address, "--token", &token])
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("driver failed: {}", String::from_utf8_lossy(&out.stderr)));
            }
            String::from_utf8_lossy(&out.stdout).trim().parse::<f64>().map_err(|e| e.to_string())
        })();
        for mut s in sims {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = head.kill();
        let _ = head.wait();
        result
    }

    pub fn driver(args: &Args, tasks: usize) {
        init(args).expect("connecting to the head");
        noop::remote().get().unwrap();
        let t = Instant::now();
        let refs: Vec<_> = (0..tasks).map(|_| noop::remote()).collect();
        shoal::get_all_blocking(&refs).unwrap();
        println!("{}", tasks as f64 / t.elapsed().as_secs_f64());
    }

    pub fn worker(args: &Args, nodes: usize) {
        let address = args.address.clone().expect("--address");
        let token = args.token.clone();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let mut all = Vec::new();
            for i in 0..nodes {
                let (address, token) = (address.clone(), token.clone());
                all.push(tokio::spawn(async move {
                    // Like a real worker: retry until the head takes us.
                    let mut backoff = Duration::from_millis(50);
                    let mut tries = 0;
                    loop {
                        match node(&address, token.as_deref(), i).await {
                            Ok(()) => return,
                            Err(e) => {
                                // Hundreds of nodes connecting at once overflow
                                // the accept queue; a few resets are expected.
                                tries += 1;
                                if tries > 3 {
                                    eprintln!("sim node {i}: {e}; retrying");
                                }
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(2));
                            }
                        }
                    }
                }));
            }
            for h in all {
                let _ = h.await;
            }
        });
    }

    async fn node(address: &str, token: Option<&str>, i: usize) -> Result<(), String> {
        let mut client = shoal_proto::client::connect(address, token, Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(WorkerToHead {
            register: Some(pb::RegisterNode {
                protocol_version: shoal_proto::PROTOCOL_VERSION,
                resources: Some(pb::Resources { num_cpus: 1.0, ..Default::default() }),
                hostname: format!("sim-{i}"),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let mut inbound = client.worker_session(UnboundedReceiverStream::new(rx)).await.map_err(|e| e.to_string())?.into_inner();
        inbound.message().await.map_err(|e| e.to_string())?;
        tx.send(shoal_proto::pad::pad(WorkerToHead { credits: CREDITS, ..Default::default() })).unwrap();
        let hb = tx.clone();
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                seq += 1;
                if hb.send(shoal_proto::pad::pad(WorkerToHead { heartbeat: seq, ..Default::default() })).is_err() {
                    return;
                }
            }
        });
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return Err("session closed".into()),
                Err(e) => return Err(e.to_string()),
            };
            if msg.tasks.is_empty() {
                continue;
            }
            let results: Vec<pb::TaskResult> = msg
                .tasks
                .iter()
                .map(|t| pb::TaskResult { task: t.task, outcome: Some(pb::task_result::Outcome::Value(Default::default())), ..Default::default() })
                .collect();
            let credits = results.len() as u32;
            if tx.send(shoal_proto::pad::pad(WorkerToHead { results, credits, ..Default::default() })).is_err() {
                return Err("session closed".into());
            }
        }
    }
}
