//! The deployment files are valid for the tools that read them.

use std::process::Command;

/// `systemd-analyze verify` accepts each unit (with ExecStart pointed at
/// the binary built here, since verify checks that it exists).
#[test]
fn systemd_units_verify() {
    let have = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(have, "systemd-analyze is needed to check the units (Debian package: systemd)");
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    for unit in ["shoal-head.service", "shoal-worker.service"] {
        let text = std::fs::read_to_string(format!("{root}/deploy/systemd/{unit}")).unwrap();
        assert!(text.contains("/usr/local/bin/shoal start") && text.contains("--block"), "{unit} runs shoal in the foreground");
        let text = text.replace("/usr/local/bin/shoal", env!("CARGO_BIN_EXE_shoal")).replace("EnvironmentFile=/etc/shoal/worker.env", "");
        let path = dir.path().join(unit);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // verify also lints units it pulls in from the host; only this unit's lines matter.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(unit)).collect();
        assert!(out.status.success() && ours.is_empty(), "{unit}: {stderr}");
    }
}

#[shoal::remote]
fn where_am_i(x: u64) -> (u64, String) {
    (x + 1, shoal::context().unwrap().node_id)
}

struct Compose {
    project: String,
    file: String,
    env: Vec<(String, String)>,
    image: String,
}

impl Compose {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &self.project, "-f", &self.file]).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("running docker-compose")
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "2"]);
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

/// The image builds from scratch (no registry), and the compose file brings
/// up a head and two workers on a private network that run this test
/// binary's tasks.
#[test]
fn container_image_and_compose_cluster_run_tasks() {
    let root = env!("CARGO_MANIFEST_DIR");
    let pid = std::process::id();
    let image = format!("shoal-test:{pid}");
    let me = std::env::current_exe().unwrap();
    let build = Command::new(format!("{root}/deploy/docker/build-image")).args(["-t", &image, env!("CARGO_BIN_EXE_shoal")]).arg(&me).output().unwrap();
    assert!(build.status.success(), "image build failed: {}", String::from_utf8_lossy(&build.stderr));
    let dir = tempfile::tempdir().unwrap();
    let token = shoal_proto::auth::generate_token();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let compose = Compose {
        project: format!("shoaltest{pid}"),
        file: format!("{root}/deploy/docker/docker-compose.yml"),
        env: vec![
            ("SHOAL_IMAGE".into(), image.clone()),
            ("SHOAL_TOKEN_FILE".into(), token_file.to_string_lossy().into_owned()),
            ("SHOAL_PORT".into(), "127.0.0.1:".into()),
        ],
        image,
    };
    let up = compose.run(&["up", "-d", "--scale", "worker=2"]);
    assert!(up.status.success(), "compose up failed: {}", String::from_utf8_lossy(&up.stderr));
    let port = compose.run(&["port", "head", "7170"]);
    let address = String::from_utf8_lossy(&port.stdout).trim().to_string();
    assert!(address.starts_with("127.0.0.1:"), "published port: {address:?} {}", String::from_utf8_lossy(&port.stderr));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Ok(st) = rt.block_on(shoal::status::fetch(&address, Some(&token)))
            && st.alive_nodes().count() == 2
        {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "two container workers did not join: {}", String::from_utf8_lossy(&compose.run(&["logs"]).stdout));
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for n in &status.nodes {
        assert!(!n.address.starts_with("127."), "workers have their own container addresses: {}", n.address);
    }
    shoal::init_blocking_with(shoal::InitConfig::default().address(address).token(token)).unwrap();
    let refs: Vec<_> = (0..200u64).map(where_am_i::remote).collect();
    let mut nodes = std::collections::HashSet::new();
    for (i, r) in refs.iter().enumerate() {
        let (v, node) = r.get_timeout(std::time::Duration::from_secs(60)).unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(v, i as u64 + 1);
        nodes.insert(node);
    }
    assert_eq!(nodes.len(), 2, "both container workers ran tasks");
}

/// The Kubernetes manifests parse and carry what Shoal needs: a head that
/// listens on the Service's port with the token from the Secret, workers
/// that join the head through the Service with the same token.
#[test]
fn kubernetes_manifests_are_consistent() {
    let root = env!("CARGO_MANIFEST_DIR");
    let script = r#"
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print(json.dumps(docs))
"#;
    let out = Command::new("python3").args(["-c", script, &format!("{root}/deploy/k8s/shoal.yaml")]).output().expect("python3 with PyYAML");
    assert!(out.status.success(), "manifests do not parse: {}", String::from_utf8_lossy(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let find =
        |kind: &str, name: &str| docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("no {kind} {name}")).clone();
    let secret = find("Secret", "shoal-token");
    assert!(secret["stringData"]["token"].is_string());
    let service = find("Service", "shoal-head");
    let head = find("Deployment", "shoal-head");
    let worker = find("Deployment", "shoal-worker");
    assert_eq!(service["spec"]["selector"], head["spec"]["template"]["metadata"]["labels"], "the Service selects the head pods");
    assert_eq!(head["spec"]["selector"]["matchLabels"], head["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(worker["spec"]["selector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"]);
    let args = |d: &serde_json::Value| -> Vec<String> {
        d["spec"]["template"]["spec"]["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
    };
    let after = |a: &[String], flag: &str| a.iter().position(|x| x == flag).map(|i| a[i + 1].clone());
    let (ha, wa) = (args(&head), args(&worker));
    assert!(ha.contains(&"--head".into()) && ha.contains(&"--block".into()) && wa.contains(&"--block".into()));
    let port = after(&ha, "--port").unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"].to_string(), port);
    let svc_port = service["spec"]["ports"][0]["port"].to_string();
    assert_eq!(after(&wa, "--address").unwrap(), format!("shoal-head:{svc_port}"), "workers join through the Service");
    for (d, a) in [(&head, &ha), (&worker, &wa)] {
        let token_file = after(a, "--token-file").unwrap();
        let spec = &d["spec"]["template"]["spec"];
        let mount = spec["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| token_file.starts_with(m["mountPath"].as_str().unwrap()))
            .expect("the token file is mounted")
            .clone();
        let vol = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap().clone();
        assert_eq!(vol["secret"]["secretName"], "shoal-token", "the token comes from the Secret");
        assert!(token_file.ends_with("/token"), "the Secret's key is the file name");
    }
    // The head's durable log is on a volume, not in the container's own
    // filesystem, so a restarted head container resumes the work.
    let data_dir = after(&ha, "--data-dir").expect("the head names its data dir");
    let head_spec = &head["spec"]["template"]["spec"];
    let mount = head_spec["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| data_dir.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the data dir is on a volume")
        .clone();
    assert!(head_spec["volumes"].as_array().unwrap().iter().any(|v| v["name"] == mount["name"] && v.get("secret").is_none()), "a writable volume");
    // The shoal binary accepts exactly these arguments.
    for a in [&ha, &wa] {
        // Valid arguments plus --help print help; an unknown one is an error.
        let out = Command::new(env!("CARGO_BIN_EXE_shoal")).args(a.iter()).arg("--help").output().unwrap();
        assert!(out.status.success(), "shoal rejects {a:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// A single-node Slurm of our own (munge, slurmctld, slurmd, config in a
/// temp dir), stopped on drop.
struct Slurm {
    dir: tempfile::TempDir,
    daemons: Vec<std::process::Child>,
}

impl Slurm {
    fn conf(&self) -> std::path::PathBuf {
        self.dir.path().join("slurm.conf")
    }

    /// Starts Slurm; a port taken between choosing it and slurmctld's bind
    /// (other tests open sockets all the time) gets a fresh pair of ports.
    fn start() -> Slurm {
        for tool in ["slurmctld", "slurmd", "sbatch", "munged"] {
            assert!(
                Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().unwrap().status.success(),
                "{tool} is needed (Debian packages slurm-wlm, munge)"
            );
        }
        // munge authenticates Slurm's messages; start it if it is not running.
        let munge_ok = || Command::new("sh").args(["-c", "munge -n 2>/dev/null | unmunge >/dev/null 2>&1"]).status().unwrap().success();
        if !munge_ok() {
            let setup = "mkdir -p /run/munge /var/log/munge /var/lib/munge && chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge \
                         && (test -s /etc/munge/munge.key || runuser -u munge -- mungekey --create) && runuser -u munge -- /usr/sbin/munged";
            let out = Command::new("sh").args(["-c", setup]).output().unwrap();
            assert!(out.status.success() && munge_ok(), "starting munged: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut last_log = String::new();
        for _ in 0..3 {
            match Slurm::try_start() {
                Ok(s) => return s,
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("slurm did not come up: {log}"),
            }
        }
        panic!("slurm did not come up (its ports were taken three times): {last_log}");
    }

    /// Two ports the kernel says are free right now (a fixed guess could be
    /// any test's outgoing connection; a race is left, which `start` retries).
    fn free_ports() -> (u16, u16) {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
    }

    fn try_start() -> Result<Slurm, String> {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap().trim().to_string();
        let (ctld_port, slurmd_port) = Slurm::free_ports();
        let cpus = std::thread::available_parallelism().unwrap().get();
        let conf = format!(
            "ClusterName=shoaltest\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\nSlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n\
             AuthType=auth/munge\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\nReturnToService=2\n\
             SchedulerType=sched/builtin\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nJobCompType=jobcomp/none\n\
             AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n\
             NodeName={host} CPUs={cpus} State=UNKNOWN\nPartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n"
        );
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        std::fs::write(dir.path().join("slurm.conf"), conf).unwrap();
        let mut s = Slurm { dir, daemons: Vec::new() };
        for daemon in ["slurmctld", "slurmd"] {
            let child = Command::new(daemon)
                .arg("-D")
                .env("SLURM_CONF", s.conf())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            s.daemons.push(child);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let out = Command::new("sinfo").args(["-h", "-o", "%t"]).env("SLURM_CONF", s.conf()).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                return Ok(s);
            }
            let log = || {
                let ctld = std::fs::read_to_string(s.dir.path().join("slurmctld.log")).unwrap_or_default();
                let slurmd = std::fs::read_to_string(s.dir.path().join("slurmd.log")).unwrap_or_default();
                format!("{ctld}\n--- slurmd ---\n{slurmd}")
            };
            let exited = s.daemons.iter_mut().any(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || std::time::Instant::now() >= deadline {
                return Err(log());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

/// deploy/slurm/shoal.sbatch on a real (single-node) Slurm: the job starts
/// a head and a worker per node with srun, runs the quickstart against
/// them, and leaves nothing running.
#[test]
fn slurm_batch_script_runs_a_program_on_the_allocation() {
    let slurm = Slurm::start();
    let root = env!("CARGO_MANIFEST_DIR");
    let work = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let quickstart = exe.parent().unwrap().parent().unwrap().join("examples").join("quickstart");
    let out = Command::new("sbatch")
        .args(["--wait", "--output=job.out", &format!("{root}/deploy/slurm/shoal.sbatch")])
        .arg(&quickstart)
        .current_dir(work.path())
        .env("SLURM_CONF", slurm.conf())
        .env("SHOAL", env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_PORT", (30_000 + std::process::id() % 20_000).to_string())
        .output()
        .unwrap();
    let job = std::fs::read_to_string(work.path().join("job.out")).unwrap_or_default();
    assert!(out.status.success(), "sbatch failed: {}\n{job}", String::from_utf8_lossy(&out.stderr));
    assert!(job.contains("1 of 1 workers up"), "{job}");
    assert!(job.contains("sum of squares (tree reduce on the cluster): 385"), "{job}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(job.contains(&format!("{cpus} CPUs")), "the worker got the node's CPUs (--exclusive): {job}");
}
