//! A `nats-server` with JetStream on a random port and a temporary store (removed on drop);
//! stopped and restarted in place for the outage tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, temp_dir, workspace_root};

/// Where the `nats-server` binary is: `$NATS_SERVER_BIN`, the project's `.tools/`, or `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return p.into();
    }
    let local = workspace_root().join(".tools/py/bin/nats-server");
    if local.exists() {
        return local;
    }
    PathBuf::from("nats-server")
}

/// A `nats-server` with JetStream, on its own port and store.
pub struct NatsServer {
    port: u16,
    store: PathBuf,
    jetstream: bool,
    /// `--user` and `--pass`, for a secured server.
    auth: Option<(String, String)>,
    /// More of nats-server's configuration (users and their permissions, say).
    config: Option<String>,
    /// JetStream flushes every write to disk before acknowledging it (`sync_interval: always`).
    sync_always: bool,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// Starts a server without JetStream: Herald must refuse it.
    pub fn start_without_jetstream() -> Self {
        Self::start_with(false)
    }

    /// Starts a server with JetStream that demands a user and password.
    pub fn start_with_password(user: &str, pass: &str) -> Self {
        let mut server = Self {
            port: free_port(),
            store: temp_dir("herald-nats"),
            jetstream: true,
            auth: Some((user.into(), pass.into())),
            config: None,
            sync_always: false,
            child: None,
        };
        server.restart();
        server
    }

    /// Starts a server whose JetStream flushes every write to disk before acknowledging it.
    pub fn start_synced() -> Self {
        let mut server = Self::new(true);
        server.sync_always = true;
        server.restart();
        server
    }

    /// Starts a server with JetStream and `config` added to its configuration file (users and
    /// their permissions, say: `authorization { users = [ … ] }`).
    pub fn start_with_config(config: &str) -> Self {
        let mut server = Self::new(true);
        server.config = Some(config.to_owned());
        server.restart();
        server
    }

    fn new(jetstream: bool) -> Self {
        let (port, store) = (free_port(), temp_dir("herald-nats"));
        Self { port, store, jetstream, auth: None, config: None, sync_always: false, child: None }
    }

    fn start_with(jetstream: bool) -> Self {
        let mut server = Self::new(jetstream);
        server.restart();
        server
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (its store stays, so [`NatsServer::restart`] brings the data back).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::File::create(self.store.join("server.log")).expect("log file");
        let mut cmd = Command::new(nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.sync_always || self.config.is_some() {
            let config = self.store.join("nats.conf");
            let sync = if self.sync_always { "  sync_interval: always\n" } else { "" };
            let mut text = format!("jetstream {{\n  store_dir: {:?}\n{sync}}}\n", self.store.join("js"));
            text.push_str(self.config.as_deref().unwrap_or_default());
            std::fs::write(&config, text).expect("nats config");
            cmd.arg("-c").arg(config);
        } else if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.store.join("js"));
        }
        if let Some((user, pass)) = &self.auth {
            cmd.args(["--user", user, "--pass", pass]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap_or_else(|e| {
            panic!("cannot start {}: {e} (scripts/ensure-nats.sh installs it)", nats_server_bin().display())
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; see {}",
                self.store.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain client of this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect to test nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
