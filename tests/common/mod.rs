//! Test harness: real `shoal` head and worker processes on loopback, each
//! with its own session dir and a random free port. Processes are killed
//! when the harness drops, whatever the test's outcome.

#![allow(dead_code)]

pub mod hosts;
pub mod http;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Runs `shoal` with `args` in session dir `home`; returns its output.
pub fn shoal(home: &Path, args: &[&str]) -> Output {
    Command::new(SHOAL)
        .args(args)
        .env("SHOAL_HOME", home)
        .env_remove("SHOAL_ADDRESS")
        .env_remove("SHOAL_TOKEN")
        .env_remove("SHOAL_TOKEN_FILE")
        .output()
        .expect("running shoal")
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub struct Worker {
    pub child: Child,
    pub home: tempfile::TempDir,
    pub node_id: String,
}

pub struct Cluster {
    pub home: tempfile::TempDir,
    pub address: String,
    pub token: String,
    pub head: Child,
    pub workers: Vec<Worker>,
    /// How the head was started, to restart it the same way.
    head_args: Vec<String>,
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log file");
    cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).spawn().expect("spawning shoal")
}

impl Cluster {
    /// A head without a local worker (`--num-cpus 0`) plus `extra` args,
    /// listening on loopback.
    pub fn head(extra: &[&str]) -> Cluster {
        Cluster::head_on("127.0.0.1", extra)
    }

    /// A head with no local worker, one worker per entry of `workers` (its
    /// arguments), and this test process connected as the driver.
    pub fn connected(workers: &[&[&str]]) -> Cluster {
        let mut c = Cluster::head(&[]);
        for args in workers {
            c.add_worker(args);
        }
        c.connect();
        c
    }

    /// A head listening on `bind` (e.g. 0.0.0.0 to serve other hosts).
    pub fn head_on(bind: &str, extra: &[&str]) -> Cluster {
        let home = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = ["start", "--head", "--block", "--port", "0", "--bind", bind, "--num-cpus", "0"].iter().map(|s| s.to_string()).collect();
        // Every test head serves its dashboard, on a port of its own.
        if !extra.iter().any(|a| a.starts_with("--dashboard-port") || *a == "--no-dashboard") {
            args.extend(["--dashboard-port".to_string(), "0".to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let head = Self::spawn_head(home.path(), &args, "head.log");
        let session = Self::wait_session(home.path(), &head);
        let address = session["address"].as_str().unwrap().to_string();
        let token = std::fs::read_to_string(home.path().join("token")).map(|t| t.trim().to_string()).unwrap_or_default();
        // A restart must come back on the same port.
        let port = address.rsplit(':').next().unwrap().to_string();
        args[4] = port;
        Cluster { home, address, token, head, workers: Vec::new(), head_args: args }
    }

    fn spawn_head(home: &Path, args: &[String], log: &str) -> Child {
        let mut cmd = Command::new(SHOAL);
        cmd.args(args);
        cmd.env("SHOAL_HOME", home).env("RUST_LOG", "info,h2=warn");
        // Pre-faulting costs ~2 s of CPU per GiB here; the suite starts
        // dozens of workers on 2 cores, so they fault pages in on use.
        cmd.env("SHOAL_OBJECT_STORE_PREFAULT", "0");
        spawn_logged(cmd, &home.join(log))
    }

    fn wait_session(home: &Path, head: &Child) -> Value {
        wait_for(Duration::from_secs(20), "the head to start", || {
            let s: Value = serde_json::from_slice(&std::fs::read(home.join("head.json")).ok()?).ok()?;
            (s["pid"].as_u64()? == head.id() as u64).then_some(s)
        })
    }

    /// SIGKILLs the head (a crash: nothing is flushed or said).
    pub fn kill_head(&mut self) {
        let _ = self.head.kill();
        let _ = self.head.wait();
    }

    /// Starts the head again with the same arguments, port and session dir
    /// (so the same data dir and token); its log goes to `head-2.log`, ...
    pub fn restart_head(&mut self, n: usize) {
        self.head = Self::spawn_head(self.home.path(), &self.head_args, &format!("head-{n}.log"));
        Self::wait_session(self.home.path(), &self.head);
    }

    /// The dashboard's base URL (`http://127.0.0.1:PORT`).
    pub fn dashboard(&self) -> String {
        let s: Value = serde_json::from_slice(&std::fs::read(self.home.path().join("head.json")).unwrap()).unwrap();
        s["dashboard"].as_str().expect("the head serves a dashboard").to_string()
    }

    /// Runs the `shoal` CLI against this cluster (its session dir).
    pub fn cli(&self, args: &[&str]) -> Output {
        shoal(self.home.path(), args)
    }

    pub fn token_file(&self) -> PathBuf {
        self.home.path().join("token")
    }

    /// Starts a worker process with `args` (e.g. `--num-cpus 2`) and waits
    /// until it has registered. Returns its index.
    pub fn add_worker(&mut self, args: &[&str]) -> usize {
        self.add_worker_env(args, &[])
    }

    /// Starts a worker with `args` and extra environment `env` (e.g. its
    /// own `SHOAL_HOME`) and waits until it has registered.
    pub fn add_worker_env(&mut self, args: &[&str], env: &[(&str, &Path)]) -> usize {
        let home = tempfile::tempdir().expect("tempdir");
        let mut cmd = self.worker_command(home.path(), args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = spawn_logged(cmd, &home.path().join("worker.log"));
        let session = env.iter().find(|(k, _)| *k == "SHOAL_HOME").map_or(home.path(), |(_, v)| *v);
        let ready = session.join("run").join(format!("worker-{}.ready", child.id()));
        let node_id = wait_for(Duration::from_secs(20), "the worker to register", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("worker exited early ({status}): {}", std::fs::read_to_string(home.path().join("worker.log")).unwrap_or_default());
            }
            std::fs::read_to_string(&ready).ok().filter(|s| !s.is_empty())
        });
        self.workers.push(Worker { child, home, node_id });
        self.workers.len() - 1
    }

    /// `shoal start` of a worker joining this cluster, session dir `home`.
    fn worker_command(&self, home: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(SHOAL);
        cmd.args(["start", "--block", "--address", &self.address, "--token-file"]).arg(self.token_file()).args(args);
        cmd.env("SHOAL_HOME", home).env("RUST_LOG", "info,h2=warn").env("SHOAL_OBJECT_STORE_PREFAULT", "0");
        cmd
    }

    pub fn spawn_worker(&self, home: &Path, args: &[&str]) -> Child {
        spawn_logged(self.worker_command(home, args), &home.join("worker.log"))
    }

    /// `shoal status --json` against this cluster.
    pub fn status(&self) -> Value {
        let out = shoal(self.home.path(), &["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Objects in the workers' stores, as their heartbeats last reported
    /// them (one `shoal status`).
    pub fn stored_objects(&self) -> u64 {
        let st = self.status();
        let nodes = st["nodes"].as_array().cloned().unwrap_or_default();
        nodes.iter().filter(|n| self.workers.iter().any(|w| n["id"] == w.node_id)).map(|n| n["store"]["objects"].as_u64().unwrap_or(0)).sum()
    }

    /// Waits until every worker's store reports no object.
    pub fn wait_stores_empty(&self) {
        wait_for(Duration::from_secs(30), "every store to be empty", || (self.stored_objects() == 0).then_some(()));
    }

    /// The status entry of node `id`.
    pub fn node(&self, id: &str) -> Option<Value> {
        self.status()["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).cloned()
    }

    pub fn kill_worker(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let _ = w.child.kill();
        let _ = w.child.wait();
    }

    /// Connects this test process as a driver.
    pub fn connect(&self) {
        let cfg = shoal::InitConfig::default().address(self.address.clone()).token(self.token.clone());
        shoal::init_blocking_with(cfg).expect("connecting the driver");
    }

    /// Runs ignored test `name` of this test binary as another driver of
    /// this cluster (it finds the address and token in `SHOAL_TEST_*`), and
    /// panics with its output unless it passed.
    pub fn run_helper_driver(&self, name: &str) {
        helper_passed(name, self.spawn_helper_driver(name));
    }

    /// Starts ignored test `name` as another driver of this cluster, without
    /// waiting for it (see [`helper_passed`]).
    pub fn spawn_helper_driver(&self, name: &str) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--ignored", "--nocapture"])
            .env("SHOAL_TEST_ADDRESS", &self.address)
            .env("SHOAL_TEST_TOKEN", &self.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn head_log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("head.log")).unwrap_or_default()
    }
}

/// Waits for helper driver `name` and panics with its output unless it
/// passed; returns its standard output.
pub fn helper_passed(name: &str, child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && text.contains("1 passed"), "the driver {name} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// In a helper driver: connects to the cluster named in `SHOAL_TEST_*`;
/// `false` when run on its own (the helper then does nothing).
pub fn connect_as_helper_driver() -> bool {
    let Ok(address) = std::env::var("SHOAL_TEST_ADDRESS") else { return false };
    let token = std::env::var("SHOAL_TEST_TOKEN").unwrap();
    shoal::init_blocking_with(shoal::InitConfig::default().address(address).token(token)).unwrap();
    true
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
        let _ = self.head.kill();
        let _ = self.head.wait();
    }
}

/// `n` bytes that depend on `seed`.
pub fn pattern(n: usize, seed: u64) -> shoal::Buffer {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = vec![0u8; n];
    for c in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    shoal::Buffer::from(v)
}

/// A hex digest of `b`, to compare large values cheaply.
pub fn digest(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

/// Sends a signal to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall on a child we started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}
