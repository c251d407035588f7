//! A JetStream cluster on loopback (three nodes, or as many as asked): each node its own client
//! and route ports (random) and its own temporary store, so a test can SIGKILL and restart one
//! node at a time.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{nats_server_bin, temp_dir};

/// One node of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    route_port: u16,
    /// The monitoring port (`/varz`, `/jsz`, `/connz`).
    monitor_port: u16,
    store: PathBuf,
    child: Option<Child>,
}

/// `nats-server` processes (three unless asked) forming one JetStream cluster (`herald-test`).
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// The nodes' `sync_interval`, when not nats-server's default (2 minutes).
    sync: Option<String>,
}

impl NatsCluster {
    /// Starts three nodes and returns once each accepts client connections; the cluster may
    /// still be electing its meta leader (see [`NatsCluster::wait_for_meta_leader`]).
    pub fn start() -> Self {
        Self::start_with_sync(None)
    }

    /// [`NatsCluster::start`] with the nodes' `sync_interval` set (`always`, or a duration):
    /// how often each flushes its store to disk.
    pub fn start_with_sync(sync: Option<&str>) -> Self {
        Self::start_nodes(3, sync)
    }

    /// [`NatsCluster::start_with_sync`] with `count` nodes.
    pub fn start_nodes(count: usize, sync: Option<&str>) -> Self {
        let nodes = (0..count)
            .map(|i| Node {
                name: format!("n{i}"),
                port: fixed_port(),
                route_port: fixed_port(),
                monitor_port: fixed_port(),
                store: temp_dir("herald-nats-cluster"),
                child: None,
            })
            .collect();
        let mut cluster = Self { nodes, sync: sync.map(str::to_owned) };
        for i in 0..count {
            cluster.spawn(i);
        }
        for i in 0..count {
            cluster.wait_listening(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.route_port)).collect();
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(node.store.join("server.log")).expect("log file");
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string(), "-js", "--server_name", &node.name])
            .args(["--cluster_name", "herald-test", "--cluster", &format!("nats://127.0.0.1:{}", node.route_port)])
            .args(["--routes", &routes.join(","), "-m", &node.monitor_port.to_string()])
            .args(store_args(&node.store, self.sync.as_deref()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server_bin().display()));
        node.child = Some(child);
    }

    fn wait_listening(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            let exited = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(node.store.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                panic!(
                    "node {} did not start (exit: {exited:?}); the end of its log:\n{}",
                    node.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every node's client URL, comma-separated (what `HERALD_NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Every node's monitoring URL (`http://127.0.0.1:port`), in node order.
    pub fn monitor_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("http://127.0.0.1:{}", n.monitor_port)).collect()
    }

    /// The process ids of the nodes that run.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().filter_map(|n| n.child.as_ref().map(Child::id)).collect()
    }

    /// SIGKILLs node `i` (its store stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_listening(i);
    }

    /// Waits until JetStream answers account requests, which needs an elected meta leader.
    pub async fn wait_for_meta_leader(&self) {
        let addrs: Vec<async_nats::ServerAddr> = self.url().split(',').map(|u| u.parse().expect("URL")).collect();
        let client = async_nats::connect(addrs).await.expect("connect to the cluster");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        while js.query_account().await.is_err() {
            assert!(Instant::now() < deadline, "the cluster elected no meta leader in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl NatsCluster {
    /// Waits until every replica of every stream in the account is current (none offline or
    /// lagging): a node restarted has caught up. Panics after `timeout`.
    pub async fn wait_caught_up(&self, timeout: Duration) {
        Self::wait_caught_up_at(&self.url(), timeout).await;
    }

    /// [`NatsCluster::wait_caught_up`] for the cluster at `url` (comma-separated client URLs).
    pub async fn wait_caught_up_at(url: &str, timeout: Duration) {
        use futures::StreamExt as _;
        let addrs: Vec<async_nats::ServerAddr> = url.split(',').map(|u| u.parse().expect("URL")).collect();
        let client = async_nats::connect(addrs).await.expect("connect to the cluster");
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + timeout;
        loop {
            let mut behind = Vec::new();
            let mut streams = js.streams();
            while let Some(info) = streams.next().await {
                let Ok(info) = info else {
                    behind.push("(listing failed)".to_owned());
                    break;
                };
                let replicas = info.cluster.map(|c| c.replicas).unwrap_or_default();
                if replicas.len() + 1 < info.config.num_replicas
                    || replicas.iter().any(|p| !p.current || p.offline || p.lag.unwrap_or(0) > 0)
                {
                    behind.push(info.config.name);
                }
            }
            if behind.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "streams still catching up after {timeout:?}: {behind:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A free port below Linux's ephemeral range (32768 and up): a node's port stays free while the
/// node is down, where an outgoing connection's local port (taken from that range) could
/// otherwise land on it and keep the node from starting again.
fn fixed_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    loop {
        let port = 20_000 + (start - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.store);
        }
    }
}

/// `-sd <store>`, or, with a `sync_interval`, a configuration file that sets both.
fn store_args(store: &std::path::Path, sync: Option<&str>) -> Vec<std::ffi::OsString> {
    match sync {
        Some(sync) => {
            let config = store.join("nats.conf");
            let text = format!("jetstream {{\n  store_dir: {:?}\n  sync_interval: {sync}\n}}\n", store.join("js"));
            std::fs::write(&config, text).expect("nats config");
            vec!["-c".into(), config.into()]
        }
        None => vec!["-sd".into(), store.join("js").into()],
    }
}
