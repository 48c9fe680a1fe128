//! The dashboard, `/metrics` and the state API on a real cluster: a head,
//! one worker, this test as the driver, and a real headless Chromium
//! (Debian's `chromium`, driven over the DevTools protocol) that logs in
//! with a one-time link and reads the page.
//!
//! `SHOAL_SCREENSHOT=docs/dashboard.png` also saves a screenshot.

mod common;

use common::http::*;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[shoal::remote]
fn square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * x
}

#[shoal::remote]
fn picky(x: u64) -> u64 {
    if x == 3 {
        panic!("task three refuses: {x}");
    }
    x
}

/// Runs the job the checks look at: 40 squares, one picky task that
/// fails and one that does not (42 tasks: 41 finished, 1 failed).
fn run_the_job() {
    let refs: Vec<_> = (0..40).map(square::remote).collect();
    let sum: u64 = refs.into_iter().map(|r| r.get().unwrap()).sum();
    assert_eq!(sum, (0..40u64).map(|x| x * x).sum::<u64>());
    assert!(picky::remote(3).get().is_err());
    assert_eq!(picky::remote(1).get().unwrap(), 1);
}

/// A child process killed when this goes out of scope, even when a
/// panic unwinds before the browser is fully set up.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A headless Chromium on one page, driven over the DevTools protocol.
struct Browser {
    _child: KillOnDrop,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--window-size=1400,2200", url])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is needed (Debian package chromium; scripts/test installs it)");
        let stderr = child.stderr.take().unwrap();
        let child = KillOnDrop(child);
        let mut lines = BufReader::new(stderr).lines();
        let port = loop {
            let line = lines.next().expect("chromium printed its DevTools address").unwrap();
            if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                break rest.split('/').next().unwrap().to_string();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let ws_url = wait_for(Duration::from_secs(20), "chromium's page target", || {
            let (_, body) = http_get(&format!("http://127.0.0.1:{port}/json/list"), &[]);
            let targets: Value = serde_json::from_str(&body).ok()?;
            targets.as_array()?.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"].as_str().map(String::from)
        });
        let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("the DevTools socket");
        Browser { _child: child, ws, next: 0, _profile: profile }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws.send(tungstenite::Message::text(json!({"id": id, "method": method, "params": params}).to_string())).unwrap();
        loop {
            let msg = self.ws.read().expect("a DevTools reply");
            let Ok(text) = msg.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or_default();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expression, "returnByValue": true}));
        r["result"]["value"].clone()
    }

    fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true}));
        base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap()
    }
}

#[test]
fn the_dashboard_metrics_and_state_api_show_a_real_job() {
    let c = Cluster::connected(&[&["--num-cpus", "2"]]);
    run_the_job();
    let base = c.dashboard();
    let node = c.workers[0].node_id.trim().to_string();

    // Strangers are refused everywhere that shows anything.
    for path in ["/", "/api/overview", "/api/events", "/api/tasks", "/metrics", "/login?code=0123456789abcdef"] {
        let (status, _) = http_get(&format!("{base}{path}"), &[]);
        assert_eq!(status, 401, "{path} without a login");
    }
    let (status, _) = http_get(&format!("{base}/metrics"), &[("Authorization", "Bearer not-the-token")]);
    assert_eq!(status, 401, "a wrong token");

    // A client with a wrong token is refused at the TLS handshake, and
    // the head counts it.
    let wrong = c.cli(&["status", "--address", &c.address, "--token", "not-the-token"]);
    assert!(!wrong.status.success(), "status with a wrong token");

    // /metrics (the cluster token as a bearer token) parses, and its
    // counters are the job's.
    let bearer = format!("Bearer {}", c.token);
    let (status, text) = http_get(&format!("{base}/metrics"), &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{text}");
    let samples = parse_prometheus(&text);
    assert_eq!(sample(&samples, "shoal_tasks_submitted_total"), 42.0, "{text}");
    assert_eq!(sample(&samples, "shoal_tasks_finished_total"), 41.0);
    assert_eq!(sample(&samples, "shoal_tasks_failed_total"), 1.0);
    assert_eq!(sample(&samples, "shoal_nodes{state=\"alive\"}"), 1.0);
    assert_eq!(sample(&samples, "shoal_task_dispatch_latency_seconds_count"), 42.0);
    assert!(sample(&samples, "shoal_connections_refused_total{reason=\"wrong_token\"}") >= 1.0, "{text}");
    assert!(samples.iter().any(|(s, v)| s.starts_with("shoal_object_store_capacity_bytes{") && s.contains(&node) && *v > 0.0), "per-node store series");
    // Every worker's own /metrics, found through the head (Prometheus's
    // http_sd format), needs the token too and counts this node's share.
    let (status, body) = http_get(&format!("{base}/api/prometheus-targets"), &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{body}");
    let groups: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(groups.as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups[0]["labels"]["node"], node.as_str());
    let worker_url = format!("http://{}/metrics", groups[0]["targets"][0].as_str().unwrap());
    assert_eq!(http_get(&worker_url, &[]).0, 401, "a worker's /metrics without the token");
    let (status, worker_text) = http_get(&worker_url, &[("Authorization", &bearer)]);
    assert_eq!(status, 200, "{worker_text}");
    let w = parse_prometheus(&worker_text);
    assert_eq!(sample(&w, "shoal_worker_tasks_received_total"), 42.0, "{worker_text}");
    assert_eq!(sample(&w, "shoal_worker_tasks_finished_total"), 41.0);
    assert_eq!(sample(&w, "shoal_worker_tasks_failed_total"), 1.0);
    assert!(sample(&w, "shoal_worker_executors") >= 1.0);
    assert_eq!(sample(&w, "shoal_worker_head_sessions_total"), 1.0, "registered once");
    // Heartbeats go every 500 ms: the job may have ended before the first.
    wait_for(Duration::from_secs(10), "a heartbeat in the worker's /metrics", || {
        let (_, text) = http_get(&worker_url, &[("Authorization", &bearer)]);
        (sample(&parse_prometheus(&text), "shoal_worker_heartbeats_total") >= 1.0).then_some(())
    });
    let text = format!("{text}\n{worker_text}");
    // The Grafana dashboard in deploy/ draws only series the cluster exports.
    let grafana: Value = serde_json::from_slice(&std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/shoal-dashboard.json")).unwrap()).unwrap();
    for target in grafana["panels"].as_array().unwrap().iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        let expr = target["expr"].as_str().unwrap();
        for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("shoal_")) {
            let family = name.trim_end_matches("_bucket").trim_end_matches("_total");
            assert!(text.contains(&format!("# TYPE {family} ")), "Grafana uses {name}, which no /metrics exports");
        }
    }

    // The state API through the CLI: every task with its state; the
    // failed one with its panic and where it happened.
    let out = c.cli(&["list", "tasks", "--json", "--limit", "1000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 42);
    assert_eq!(tasks.iter().filter(|t| t["phase"] == "finished").count(), 41);
    let failed: Vec<_> = tasks.iter().filter(|t| t["phase"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["function"].as_str().unwrap().ends_with("picky"));
    assert_eq!(failed[0]["error"]["message"], "task three refuses: 3");
    assert!(failed[0]["error"]["location"].as_str().unwrap().contains("tests/dashboard.rs"), "{}", failed[0]);
    assert!(tasks.iter().all(|t| t["node"].as_str().is_some_and(|n| n == node)), "each names its node");
    let id = failed[0]["id"].as_str().unwrap();
    let got = c.cli(&["get", "task", id]);
    assert!(String::from_utf8_lossy(&got.stdout).contains("task three refuses"), "{}", String::from_utf8_lossy(&got.stdout));
    let short = c.cli(&["list", "tasks", "--state", "failed", "--node", &node[..6]]);
    assert!(String::from_utf8_lossy(&short.stdout).contains("1 of 1 matching"), "a node prefix filters: {}", String::from_utf8_lossy(&short.stdout));

    // Per function: counts by state and run times.
    let out = c.cli(&["summary", "tasks", "--json"]);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sq = summary.as_array().unwrap().iter().find(|s| s["function"].as_str().unwrap().ends_with("square")).unwrap();
    assert_eq!(sq["tasks"]["finished"], 40);
    assert!(sq["mean_run_us"].as_f64().unwrap() >= 2_000.0, "squares sleep 2 ms: {sq}");

    // The timeline: valid trace JSON, one complete event per task.
    let trace_file = c.home.path().join("trace.json");
    let out = c.cli(&["timeline", "-o", trace_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trace: Value = serde_json::from_slice(&std::fs::read(&trace_file).unwrap()).unwrap();
    let spans: Vec<_> = trace["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
    assert_eq!(spans.len(), 42);
    assert!(spans.iter().all(|e| e["ts"].as_u64().unwrap() > 0 && e["dur"].as_u64().is_some() && e["tid"].as_u64().unwrap() > 0));

    // A real browser: the one-time link logs it in; the page shows the
    // node, the job's counts and the failed task's error, live.
    let out = c.cli(&["dashboard"]);
    let link = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(link.starts_with(&format!("{base}/login?code=")), "{link}");
    let mut b = Browser::open(&link);
    let page = wait_for(Duration::from_secs(30), "the page to show the job", || {
        let text = b.eval("document.body ? document.body.innerText : ''");
        let text = text.as_str()?.to_string();
        (text.contains("task three refuses: 3") && text.contains(&node[..8])).then_some(text)
    });
    assert!(page.contains("1 node(s)"), "{page}");
    let job_row = b.eval("[...document.querySelectorAll('#jobs-table tbody tr')[0].cells].map(c => c.innerText)");
    let cells: Vec<&str> = job_row.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&cells[5..], ["0", "0", "41", "1"], "pending, running, finished, failed: {cells:?}");
    assert!(page.contains("tests/dashboard.rs"), "the failure's location");
    if let Ok(path) = std::env::var("SHOAL_SCREENSHOT") {
        std::fs::write(path, b.screenshot()).unwrap();
    }
    // The link was used: a second browser with it is refused.
    let (status, _) = http_get(&link, &[]);
    assert_eq!(status, 401, "a login link works once");
}

#[shoal::remote]
fn chatty(i: u64) -> u64 {
    println!("hello from task {i}");
    eprintln!("warning from task {i}");
    i
}

/// An actor that talks: in its constructor, in a sync method, in an
/// async one.
pub struct Talker {
    said: u64,
}

#[shoal::actor]
impl Talker {
    fn new() -> Self {
        println!("talker is up");
        Talker { said: 0 }
    }

    fn say(&mut self, what: String) -> u64 {
        self.said += 1;
        println!("talker says {what} ({})", self.said);
        self.said
    }

    async fn murmur(&self, what: String) -> u64 {
        tokio::task::yield_now().await;
        eprintln!("talker murmurs {what}");
        self.said
    }
}

/// An actor with only sync methods: called from its machine, its calls
/// go straight to it (not through the head), and so do not carry their
/// lines back; those reach the driver as the actor's.
pub struct Echo;

#[shoal::actor]
impl Echo {
    fn new() -> Self {
        Echo
    }

    fn shout(&mut self, i: u64) -> u64 {
        println!("echo shouts {i}");
        i
    }
}

/// A driver of its own (its output is what the test reads).
#[test]
#[ignore]
fn helper_chatty_driver() {
    if !connect_as_helper_driver() {
        return;
    }
    let got: Vec<u64> = (0..10).map(chatty::remote).map(|r| r.get().unwrap()).collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert!(picky::remote(3).get().is_err(), "the panic is the caller's to print, or not");
    let talker = Talker::remote();
    for i in 0..3 {
        assert_eq!(talker.say(format!("hi {i}")).get().unwrap(), i + 1);
    }
    assert_eq!(talker.murmur("softly".to_string()).get().unwrap(), 3);
    let echo = Echo::remote();
    for i in 0..200 {
        assert_eq!(echo.shout(i).get().unwrap(), i);
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn what_a_task_prints_reaches_its_driver_with_a_prefix_and_stays_in_the_jobs_log() {
    let mut c = Cluster::head(&[]);
    c.add_worker(&["--num-cpus", "2"]);
    let node = c.workers[0].node_id.trim().to_string();
    let child = c.spawn_helper_driver("helper_chatty_driver");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}\n{stderr}");
    for i in 0..10 {
        let line = stdout.lines().find(|l| l.ends_with(&format!(") hello from task {i}"))).unwrap_or_else(|| panic!("no line of task {i}:\n{stdout}"));
        assert!(line.starts_with("(chatty task=") && line.contains(&format!("node={}", &node[..8])) && line.contains("pid="), "{line}");
        assert!(stderr.lines().any(|l| l.starts_with("(chatty task=") && l.ends_with(&format!(") warning from task {i}"))), "stderr to stderr:\n{stderr}");
    }
    // An actor's lines: its constructor's and async calls' under its
    // type, a sync call's under the call.
    assert!(stdout.lines().any(|l| l.starts_with("(Talker task=") && l.ends_with(") talker is up")), "{stdout}");
    for i in 0..3 {
        let line = format!(") talker says hi {i} ({})", i + 1);
        assert!(stdout.lines().any(|l| l.starts_with("(Talker.say task=") && l.ends_with(&line)), "{line}:\n{stdout}");
    }
    assert!(stderr.lines().any(|l| l.starts_with("(Talker task=") && l.ends_with(") talker murmurs softly")), "{stderr}");
    // Every call's line once: under the call through the head (the first
    // calls), under the actor once they go direct.
    let mut direct = 0;
    for i in 0..200 {
        let line = format!(") echo shouts {i}");
        let found: Vec<&str> = stdout.lines().filter(|l| l.ends_with(&line)).collect();
        assert!(found.len() == 1 && (found[0].starts_with("(Echo.shout task=") || found[0].starts_with("(Echo task=")), "{line}:\n{stdout}");
        direct += usize::from(found[0].starts_with("(Echo task="));
    }
    assert!(direct > 100, "only {direct} of 200 calls went direct");
    // The panic reached the caller as its error; nobody printed it raw.
    let worker_log = std::fs::read_to_string(c.workers[0].home.path().join("worker.log")).unwrap_or_default();
    assert!(!worker_log.contains("task three refuses") && !stdout.contains("task three refuses"), "{worker_log}");
    // The head keeps the job's lines.
    let jobs: Value = serde_json::from_slice(&c.cli(&["list", "jobs", "--json"]).stdout).unwrap();
    let job = jobs[0]["id"].to_string();
    let logs = c.cli(&["logs", "--job", &job, "-n", "0"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert_eq!(logs.lines().filter(|l| l.contains(") hello from task")).count(), 10, "{logs}");
    assert_eq!(logs.lines().filter(|l| l.contains(") talker says hi")).count(), 3, "{logs}");
    assert!(!worker_log.contains("talker"), "no actor line stayed in the worker's log: {worker_log}");
    assert!(logs.lines().any(|l| l.contains("stderr) warning from task 3")), "{logs}");
}
