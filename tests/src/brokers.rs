//! Real brokers for the destination tests, from Debian's packages (installed by
//! `scripts/ensure-brokers.sh`): [`Rabbit`] (`rabbitmq-server`) and [`Redis`] (`redis-server`),
//! each on random loopback ports with its own data folder, killable (SIGKILL) and restartable on
//! the same ports and data. Messages are read back with clients that share no code with Herald:
//! `pika` (Python, `tests/scripts/amqp.py`) and `redis-cli`.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Received, free_port, temp_dir, workspace_root};

/// SIGKILL to the child's process group (the broker's start script and the server it starts).
/// Written `-s KILL -- -PGID`: procps-ng's `kill -KILL -PGID` is not read as a process group.
pub(crate) fn kill_group(child: &mut Child) {
    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status();
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn wait_port(port: u16, what: &str, log: &std::path::Path, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start; see {}", log.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `rabbitmq-server` (as root, without the `rabbitmq` user switch).
pub struct Rabbit {
    dir: PathBuf,
    port: u16,
    /// A second listener, AMQP over TLS, when started with [`Rabbit::start_tls`].
    tls_port: Option<u16>,
    dist_port: u16,
    epmd_port: u16,
    child: Option<Child>,
}

impl Rabbit {
    /// Starts it and returns once it accepts AMQP connections (several seconds: Erlang boots).
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts it with a second listener for AMQP over TLS ([`Rabbit::tls_url`]), presenting
    /// a certificate for 127.0.0.1 signed by `ca`.
    pub fn start_tls(ca: &crate::TestCa) -> Self {
        Self::start_with(Some(ca))
    }

    fn start_with(ca: Option<&crate::TestCa>) -> Self {
        let mut rabbit = Self {
            dir: temp_dir("herald-rabbit"),
            port: free_port(),
            tls_port: ca.map(|_| free_port()),
            dist_port: free_port(),
            epmd_port: free_port(),
            child: None,
        };
        let mut config = format!("listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n", rabbit.port);
        if let (Some(ca), Some(port)) = (ca, rabbit.tls_port) {
            let (cert, key) = ca.write_server_files("127.0.0.1", &rabbit.dir);
            let ca_file = rabbit.dir.join("ca.pem");
            std::fs::write(&ca_file, ca.pem()).expect("CA file");
            config.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                ca_file.display(),
                cert.display(),
                key.display()
            ));
        }
        std::fs::write(rabbit.dir.join("rabbitmq.conf"), config).expect("rabbit config");
        rabbit.boot();
        rabbit
    }

    fn boot(&mut self) {
        let d = &self.dir;
        std::fs::write(d.join("enabled_plugins"), "[].\n").expect("rabbit plugins");
        let log = d.join("out.log");
        let bin = std::env::var_os("RABBITMQ_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/usr/lib/rabbitmq/bin/rabbitmq-server".into());
        let out = std::fs::File::create(&log).expect("rabbit log");
        let child = Command::new(&bin)
            .env("HOME", d)
            .env("RABBITMQ_NODENAME", format!("herald{}@localhost", self.port))
            .env("RABBITMQ_BASE", d)
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({e}); scripts/ensure-brokers.sh installs it", bin.display()));
        self.child = Some(child);
        wait_port(self.port, "rabbitmq-server", &log, Duration::from_secs(90));
        if let Some(port) = self.tls_port {
            wait_port(port, "rabbitmq-server's TLS listener", &log, Duration::from_secs(30));
        }
    }

    /// `amqp://guest:guest@127.0.0.1:{port}/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `amqps://guest:guest@127.0.0.1:{tls port}/%2f`, when started with [`Rabbit::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", self.tls_port.expect("started with start_tls"))
    }

    /// The AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process group of its start script and the server (its CPU is theirs).
    pub fn process_group(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: whatever it had not written to disk is gone with it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Starts it again on the same ports and data (durable queues and persistent messages
    /// survive).
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }

    /// Runs `tests/scripts/amqp.py` against it.
    fn script(&self, args: &[&str]) -> String {
        let py = std::env::var("HERALD_AMQP_PY")
            .unwrap_or_else(|_| workspace_root().join(".tools/amqp-py").display().to_string());
        let out = Command::new("python3")
            .arg(workspace_root().join("tests/scripts/amqp.py"))
            .arg(self.url())
            .args(args)
            .env("PYTHONPATH", py)
            .output()
            .expect("python3");
        assert!(out.status.success(), "amqp.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    }

    /// Declares exchange `exchange` (a durable topic exchange; `""` is the default one) and a
    /// durable queue `queue` bound to it with `binding`.
    pub fn declare(&self, exchange: &str, queue: &str, binding: &str) {
        self.script(&["declare", exchange, queue, binding]);
    }

    /// Empties `queue`.
    pub fn purge(&self, queue: &str) {
        self.script(&["purge", queue]);
    }

    /// Takes every message in `queue` (acked: they are gone from it), oldest first, with its
    /// properties in `amqp-*` headers (`amqp-message-id`, `amqp-type`, `amqp-delivery-mode`,
    /// `amqp-content-type`, `amqp-routing-key`).
    pub fn drain(&self, queue: &str) -> Vec<Received> {
        self.script(&["drain", queue])
            .lines()
            .map(|line| {
                let m: Value = serde_json::from_str(line).expect("amqp.py prints JSON lines");
                let headers = m["headers"].as_object().cloned().unwrap_or_default();
                let body = m["body"].as_str().unwrap_or_default().as_bytes().to_vec();
                Received::message(
                    headers.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_owned())),
                    body,
                )
            })
            .collect()
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `redis-server` writing every change to its append-only file before it answers
/// (`appendfsync always`), so a restart keeps what it confirmed.
pub struct Redis {
    dir: PathBuf,
    port: u16,
    password: Option<String>,
    /// Its port speaks only TLS, with these PEM files (certificate, key, CA).
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// It requires a client certificate signed by its CA; `redis-cli` presents this one
    /// (certificate, key).
    client: Option<(PathBuf, PathBuf)>,
    /// More `redis-server` arguments (a cluster node's, a replica's).
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// Starts it without a password.
    pub fn start() -> Self {
        Self::start_with_password(None)
    }

    /// Starts it, requiring `password` if given.
    pub fn start_with_password(password: Option<&str>) -> Self {
        let mut redis = Self {
            dir: temp_dir("herald-redis"),
            port: free_port(),
            password: password.map(str::to_owned),
            tls: None,
            client: None,
            args: Vec::new(),
            child: None,
        };
        redis.boot();
        redis
    }

    /// Starts it without a password, with more `redis-server` arguments (`--replicaof h p`,
    /// `--cluster-enabled yes` …).
    pub fn start_with_args(args: &[&str]) -> Self {
        let mut redis = Self {
            dir: temp_dir("herald-redis"),
            port: free_port(),
            password: None,
            tls: None,
            client: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
        };
        redis.boot();
        redis
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts it speaking only TLS, presenting a certificate for 127.0.0.1 signed by `ca`.
    pub fn start_tls(ca: &crate::TestCa) -> Self {
        let dir = temp_dir("herald-redis");
        let (cert, key) = ca.write_server_files("127.0.0.1", &dir);
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("CA file");
        let mut redis = Self {
            dir,
            port: free_port(),
            password: None,
            tls: Some((cert, key, ca_file)),
            client: None,
            args: Vec::new(),
            child: None,
        };
        redis.boot();
        redis
    }

    /// [`Redis::start_tls`], refusing clients that present no certificate signed by `ca`
    /// (`tls-auth-clients yes`).
    pub fn start_tls_requiring_client_certificates(ca: &crate::TestCa) -> Self {
        let dir = temp_dir("herald-redis");
        let (cert, key) = ca.write_server_files("127.0.0.1", &dir);
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("CA file");
        let (client_cert, client_key) = ca.issue_client("redis-cli");
        let client = (dir.join("cli.pem"), dir.join("cli.key"));
        std::fs::write(&client.0, client_cert).expect("client certificate");
        std::fs::write(&client.1, client_key).expect("client key");
        let mut redis = Self {
            dir,
            port: free_port(),
            password: None,
            tls: Some((cert, key, ca_file)),
            client: Some(client),
            args: Vec::new(),
            child: None,
        };
        redis.boot();
        redis
    }

    fn boot(&mut self) {
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(std::env::var_os("REDIS_SERVER_BIN").unwrap_or_else(|| "redis-server".into()));
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((cert, key, ca)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-auth-clients", if self.client.is_some() { "yes" } else { "no" }])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca),
        };
        cmd.args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.args);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); scripts/ensure-brokers.sh installs it"));
        self.child = Some(child);
        wait_port(self.port, "redis-server", &log, Duration::from_secs(30));
    }

    /// `redis://[:password@]127.0.0.1:{port}` (`rediss://` when it speaks TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        match &self.password {
            Some(p) => format!("{scheme}://:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
    }

    /// Its process group.
    pub fn process_group(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        self.boot();
    }

    /// Runs `redis-cli` with `args` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string(), "--no-auth-warning"]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p]);
        }
        if let Some((_, _, ca)) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        if let Some((cert, key)) = &self.client {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every entry of `stream`, oldest first, its fields as headers (and `body` as the body).
    pub fn entries(&self, stream: &str) -> Vec<Received> {
        // `--json` is not in Debian's redis-cli 7.0: the raw output alternates field and value,
        // one per line, after each entry's id; bodies are single-line JSON.
        let text = self.cli(&["--raw", "XRANGE", stream, "-", "+"]);
        // An empty stream prints one empty line.
        let lines: Vec<&str> = if text.trim().is_empty() { Vec::new() } else { text.lines().collect() };
        let mut out = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            // An entry: its id, then field, value, field, value … until the next id.
            i += 1;
            let mut headers = Vec::new();
            let mut body = Vec::new();
            while i + 1 < lines.len() && !is_entry_id(lines[i]) {
                if lines[i] == "body" {
                    body = lines[i + 1].as_bytes().to_vec();
                } else {
                    headers.push((lines[i].to_owned(), lines[i + 1].to_owned()));
                }
                i += 2;
            }
            out.push(Received::message(headers, body));
        }
        out
    }
}

/// `1700000000000-0`.
fn is_entry_id(line: &str) -> bool {
    line.split_once('-').is_some_and(|(ms, seq)| {
        !ms.is_empty()
            && !seq.is_empty()
            && ms.bytes().all(|b| b.is_ascii_digit())
            && seq.bytes().all(|b| b.is_ascii_digit())
    })
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP server that accepts connections and never answers: a broker that hangs.
pub struct Silent {
    port: u16,
    _task: tokio::task::JoinHandle<()>,
}

impl Silent {
    /// Starts it on a random loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { port, _task: task }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}
