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
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{}", child.id())]).status();
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_port(port: u16, what: &str, log: &std::path::Path, within: Duration) {
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
    dist_port: u16,
    epmd_port: u16,
    child: Option<Child>,
}

impl Rabbit {
    /// Starts it and returns once it accepts AMQP connections (several seconds: Erlang boots).
    pub fn start() -> Self {
        let mut rabbit = Self {
            dir: temp_dir("herald-rabbit"),
            port: free_port(),
            dist_port: free_port(),
            epmd_port: free_port(),
            child: None,
        };
        rabbit.boot();
        rabbit
    }

    fn boot(&mut self) {
        let d = &self.dir;
        std::fs::write(
            d.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n", self.port),
        )
        .expect("rabbit config");
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
    }

    /// `amqp://guest:guest@127.0.0.1:{port}/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
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
            child: None,
        };
        redis.boot();
        redis
    }

    fn boot(&mut self) {
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(std::env::var_os("REDIS_SERVER_BIN").unwrap_or_else(|| "redis-server".into()));
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log);
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}); scripts/ensure-brokers.sh installs it"));
        self.child = Some(child);
        wait_port(self.port, "redis-server", &log, Duration::from_secs(30));
    }

    /// `redis://[:password@]127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
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
        let out = cmd.args(args).output().expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every entry of `stream`, oldest first, its fields as headers (and `body` as the body).
    pub fn entries(&self, stream: &str) -> Vec<Received> {
        // `--json` is not in Debian's redis-cli 7.0: the raw output alternates field and value,
        // one per line, after each entry's id; bodies are single-line JSON.
        let text = self.cli(&["--raw", "XRANGE", stream, "-", "+"]);
        let lines: Vec<&str> = text.lines().collect();
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
