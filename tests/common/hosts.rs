//! Separate hosts for multi-host tests: network namespaces, each with its
//! own address on a veth pair to the root namespace, where the head and the
//! driver run. A host can be cut off (its link set down) and healed, or
//! killed (every process in it, SIGKILL). Needs root and iproute2.

use std::process::{Child, Command, Stdio};

pub struct Hosts {
    prefix: String,
    /// Second octet of this test's addresses: 10.<net>.<host>.{1 root, 2 host}.
    net: u32,
    count: usize,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Hosts {
    /// Creates `count` hosts, named after this test process.
    pub fn create(count: usize) -> Hosts {
        // SAFETY: getuid has no preconditions.
        assert_eq!(unsafe { libc::getuid() }, 0, "multi-host tests create network namespaces and need root");
        let pid = std::process::id();
        let h = Hosts { prefix: format!("sh{}", pid % 100_000), net: 100 + pid % 150, count };
        for i in 1..=count {
            let (ns, root_if, host_if) = (h.ns(i), h.root_if(i), h.host_if(i));
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
            let _ = Command::new("ip").args(["link", "del", &root_if]).output();
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &root_if, "type", "veth", "peer", "name", &host_if]);
            ip(&["link", "set", &host_if, "netns", &ns]);
            ip(&["addr", "add", &format!("{}/24", h.root_ip(i)), "dev", &root_if]);
            ip(&["link", "set", &root_if, "up"]);
            ip(&["netns", "exec", &ns, "ip", "addr", "add", &format!("{}/24", h.host_ip(i)), "dev", &host_if]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", &host_if, "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
            // Hosts reach each other through the root namespace (workers
            // pull objects from their peers).
            ip(&["netns", "exec", &ns, "ip", "route", "add", "default", "via", &h.root_ip(i)]);
        }
        // Docker's FORWARD policy drops routed traffic: let this test's
        // subnet through (removed on drop). Without iptables nothing drops.
        let _ = Command::new("iptables").args(h.forward_rule("-I")).output();
        h
    }

    fn forward_rule(&self, op: &str) -> Vec<String> {
        let net = format!("10.{}.0.0/16", self.net);
        [op, "FORWARD", "-s", &net, "-d", &net, "-j", "ACCEPT"].iter().map(|s| s.to_string()).collect()
    }

    fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }
    fn root_if(&self, i: usize) -> String {
        format!("{}r{i}", self.prefix)
    }
    fn host_if(&self, i: usize) -> String {
        format!("{}p{i}", self.prefix)
    }

    /// The address host `i` reaches the root namespace (the head) at.
    pub fn root_ip(&self, i: usize) -> String {
        format!("10.{}.{i}.1", self.net)
    }

    /// Host `i`'s own address.
    pub fn host_ip(&self, i: usize) -> String {
        format!("10.{}.{i}.2", self.net)
    }

    /// Runs `program args` inside host `i` with the given environment.
    pub fn spawn(&self, i: usize, program: &str, args: &[&str], env: &[(&str, &std::path::Path)], log: &std::path::Path) -> Child {
        let f = std::fs::File::create(log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i), program]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(f.try_clone().unwrap()).stderr(f).spawn().expect("spawning in a namespace")
    }

    /// Cuts host `i` off the network (its link goes down).
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.root_if(i), "down"]);
    }

    /// Reconnects host `i`.
    pub fn heal(&self, i: usize) {
        ip(&["link", "set", &self.root_if(i), "up"]);
    }

    /// SIGKILLs every process of host `i`: the machine dies.
    pub fn kill(&self, i: usize) {
        let out = Command::new("ip").args(["netns", "pids", &self.ns(i)]).output().expect("ip netns pids");
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: plain syscall on processes of a namespace this test made.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("iptables").args(self.forward_rule("-D")).output();
        for i in 1..=self.count {
            self.kill(i);
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).output();
            let _ = Command::new("ip").args(["link", "del", &self.root_if(i)]).output();
        }
    }
}
