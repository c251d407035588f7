//! Redis beyond one server, from Debian's `redis-server`: a [`RedisCluster`] of masters (slots
//! handed out by `redis-cli --cluster create`, a slot moved between nodes as
//! `redis-cli --cluster reshard` moves it) and a [`Sentinel`] watching a master.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::brokers::{kill_group, wait_port};
use crate::{Redis, free_port, temp_dir};

/// Masters of one Redis Cluster on loopback, every slot assigned.
pub struct RedisCluster {
    nodes: Vec<Redis>,
}

impl RedisCluster {
    /// Starts `count` (≥ 3) masters and returns once every node says the cluster is ok.
    pub fn start(count: usize) -> Self {
        let nodes: Vec<Redis> = (0..count)
            .map(|_| {
                Redis::start_with_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the Redis Cluster is not ok after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Redis {
        &self.nodes[i]
    }

    /// The slot `key` hashes to.
    pub fn slot(&self, key: &str) -> u16 {
        self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().expect("a slot")
    }

    /// Node `i`'s cluster id.
    fn id(&self, i: usize) -> String {
        self.nodes[i].cli(&["CLUSTER", "MYID"]).trim().to_owned()
    }

    /// The node holding `key`'s slot, as node `0` sees the cluster.
    pub fn owner(&self, key: &str) -> usize {
        let slot = self.slot(key);
        let map = self.nodes[0].cli(&["CLUSTER", "NODES"]);
        for line in map.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(port) = fields.get(1).and_then(|a| a.split('@').next()).and_then(|a| a.rsplit(':').next()) else {
                continue;
            };
            let holds = fields.iter().skip(8).any(|range| match range.split_once('-') {
                Some((a, b)) => a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b),
                None => range.parse::<u16>().is_ok_and(|s| s == slot),
            });
            if holds {
                return self.nodes.iter().position(|n| n.port().to_string() == port).expect("a node of this cluster");
            }
        }
        panic!("no node holds slot {slot}: {map}");
    }

    /// Moves `key`'s slot, with every key in it, to node `to`, as `redis-cli --cluster reshard`
    /// does: importing and migrating marks, `MIGRATE` of the keys, then the new owner told to
    /// every node. Writes to the slot meanwhile are answered `ASK`, and after it `MOVED`.
    pub fn move_slot(&self, key: &str, to: usize) {
        let from = self.owner(key);
        let slot = self.slot(key).to_string();
        let (from_id, to_id) = (self.id(from), self.id(to));
        self.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        self.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let keys = self.nodes[from].cli(&["CLUSTER", "GETKEYSINSLOT", &slot, "100"]);
            let keys: Vec<&str> = keys.lines().map(str::trim).filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = self.nodes[to].port().to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "10000", "KEYS"];
            args.extend(keys.iter().copied());
            let answer = self.nodes[from].cli(&args);
            assert!(answer.contains("OK"), "MIGRATE: {answer}");
        }
        for node in &self.nodes {
            node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.owner(key) != to {
            assert!(Instant::now() < deadline, "slot {slot} did not move to node {to}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `redis-server --sentinel` watching one master (quorum 1, a master unanswering for 1 s is
/// down, failed over at once).
pub struct Sentinel {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Sentinel {
    /// Starts it watching the master on `master_port` under `name`.
    pub fn start(name: &str, master_port: u16) -> Self {
        let dir = temp_dir("herald-sentinel");
        let port = free_port();
        // Sentinel rewrites its configuration file as it learns: it must be its own, writable.
        let config = dir.join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
             sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 3000\n\
             sentinel parallel-syncs {name} 1\n",
            dir = dir.display(),
            log = dir.join("sentinel.log").display(),
        );
        std::fs::write(&config, text).expect("sentinel.conf");
        let child = Command::new(std::env::var_os("REDIS_SERVER_BIN").unwrap_or_else(|| "redis-server".into()))
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel ({e})"));
        wait_port(port, "redis-server --sentinel", &dir.join("sentinel.log"), Duration::from_secs(30));
        Self { dir, port, child: Some(child) }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many replicas of master `name` this Sentinel knows.
    pub fn replicas(&self, name: &str) -> usize {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "SENTINEL", "replicas", name])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim() == "name").count()
    }

    /// The master's port, as this Sentinel names it now.
    pub fn master_port(&self, name: &str) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw", "SENTINEL", "get-master-addr-by-name", name])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
