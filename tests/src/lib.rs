//! The harness the end-to-end suites (`tests/e2e`) and the benchmark (`herald-bench`) share:
//! - [`NatsServer`] (`nats`): a real `nats-server -js` on a random port with a temporary store;
//!   [`NatsCluster`] (`cluster`): three of them as a JetStream cluster;
//! - [`Receiver`] (`receiver`): a real HTTP(S) server whose answers a test scripts;
//!   [`TestCa`] (`tls`): certificates made on the spot; [`Proxy`] (`proxy`): Debian's tinyproxy;
//! - [`Rabbit`], [`Redis`] (`brokers`): Debian's RabbitMQ and Redis, for broker destinations;
//! - [`Stack`] (`stack`): Herald's gateway and dispatcher in this process, with the test flags and
//!   an API client; [`DispatcherProcess`] (`process`): a dispatcher as a real process, to kill.
#![forbid(unsafe_code)]

mod brokers;
mod cluster;
mod nats;
mod process;
mod proxy;
mod receiver;
mod redis_ha;
mod stack;
mod tls;
pub mod token_server;

pub use brokers::{Rabbit, Redis, Silent};
pub use cluster::NatsCluster;
pub use nats::{NatsServer, nats_server_bin};
pub use process::DispatcherProcess;
pub use proxy::Proxy;
pub use receiver::{Received, Receiver, Reply};
pub use redis_ha::{RedisCluster, Sentinel};
pub use stack::{Stack, Who, dispatcher_args, dispatcher_args_with, gateway_config, init, metric_sum};
pub use tls::{TestCa, Validity, fingerprint};
pub use token_server::{Protected, TokenRequest, TokenServer};

use std::path::{Path, PathBuf};

use serde_json::Value;

/// What the test stacks allow despite the SSRF guard: the receivers live on loopback.
pub const LOOPBACK: &str = "127.0.0.0/8,::1/128";

/// The key that seals signing secrets in every test stack.
pub const SECRET_KEYS: &str = "test:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The admin token every test stack accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// A token with only the `publish` scope.
pub const PUBLISH_TOKEN: &str = "test-publish-token-0123456789";

/// The repository root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Where `cargo build` put the workspace's binaries (next to this test executable).
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/e2e-<hash> → target/debug/<name>
    let dir = exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A new empty directory under the system temp dir, named after `prefix`.
pub fn temp_dir(prefix: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Repeated 2xx answers at `path` of a [`Receiver`]: `(duplicates, despite_record)`, where
/// `duplicates` counts every 2xx answer to a webhook id beyond its first, and `despite_record`
/// those of them sent although the send before had been recorded as delivered on
/// `HERALD_ATTEMPTS` (read through the gateway at `gateway`): the repeats the check before
/// sending exists to prevent. The others were in flight when a process died, their record lost
/// with it: at least once allows them.
pub async fn duplicates_at(gateway: &str, received: &[Received], path: &str) -> (usize, usize) {
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for r in received.iter().filter(|r| r.path == path && (200..300).contains(&r.status)) {
        *counts.entry(r.header("webhook-id").unwrap_or_default()).or_default() += 1;
    }
    let http = reqwest::Client::new();
    let (mut duplicates, mut despite_record) = (0, 0);
    for (id, count) in counts.into_iter().filter(|(_, c)| *c > 1) {
        duplicates += count - 1;
        let response = http
            .get(format!("{gateway}/v1/events/{id}/attempts?limit=100"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("gateway reachable");
        let attempts: Value = serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or_default();
        let records = attempts["data"].as_array().cloned().unwrap_or_default();
        let delivered = records
            .iter()
            .filter(|a| a["url"].as_str().is_some_and(|u| u.ends_with(path)) && a["outcome"] == "delivered")
            .count();
        despite_record += delivered.min(count).saturating_sub(1);
    }
    (duplicates, despite_record)
}
