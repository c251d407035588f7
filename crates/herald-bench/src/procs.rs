//! The gateway and dispatchers as real processes (the binaries built next to this one), so each
//! has its own memory figures, read from `/proc`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Flags every Herald process of the benchmark gets: loopback receivers allowed, a key ring.
fn common_flags(nats_url: &str) -> Vec<String> {
    ["--nats-url", nats_url, "--allow-networks", herald_harness::LOOPBACK, "--secret-keys", herald_harness::SECRET_KEYS]
        .map(str::to_owned)
        .to_vec()
}

/// Where the Herald binaries are run from when not next to this executable (`--binaries`).
static BINARIES: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Runs every Herald process from `dir` (another build, to compare two in one sitting).
pub fn use_binaries_from(dir: PathBuf) {
    let _ = BINARIES.set(dir);
}

/// A Herald binary from `--binaries`, or next to this executable (`target/release/` for a
/// release run).
fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = match BINARIES.get() {
        Some(dir) => dir.join(name),
        None => std::env::current_exe()?.parent().context("executable without a directory")?.join(name),
    };
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it first (`cargo build --release --bins`, or use scripts/bench.sh)",
        path.display()
    );
    Ok(path)
}

/// The directory the Herald binaries run from (`--binaries`, or next to this executable).
pub fn binaries_dir() -> anyhow::Result<PathBuf> {
    Ok(binary("herald-gateway")?.parent().context("a binary without a directory")?.to_owned())
}

/// A running Herald process; killed when dropped.
pub struct Proc {
    child: Child,
    /// Where its `/metrics` are served.
    metrics_url: Option<String>,
    /// Where its log goes.
    log: PathBuf,
}

/// Where the Herald processes' logs go, one file per process (`herald-gateway-3.log`).
pub const LOG_DIR: &str = "target/herald-bench-logs";

/// A fresh log file for one process of `binary`; the directory is emptied at the first call.
fn log_file(binary: &std::path::Path) -> anyhow::Result<PathBuf> {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = PathBuf::from(LOG_DIR);
    if n == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {LOG_DIR}"))?;
    let stem = binary.file_name().map_or("herald".into(), |f| f.to_string_lossy());
    Ok(dir.join(format!("{stem}-{n}.log")))
}

/// Memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kib: u64,
    /// Highest resident so far (`VmHWM`).
    pub peak_kib: u64,
}

impl Proc {
    /// Starts `path` with `args` at the log level users run (`info`, unless `HERALD_LOG` says
    /// otherwise for the whole benchmark: the log filter costs CPU per request), its log in a
    /// file of its own under [`LOG_DIR`].
    fn spawn_binary(path: &std::path::Path, args: &[String]) -> anyhow::Result<Self> {
        let name = path.display();
        let log = log_file(path)?;
        let mut command = Command::new(path);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        if let Ok(filter) = std::env::var("HERALD_LOG") {
            command.env("HERALD_LOG", filter);
        }
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self { child, metrics_url: None, log })
    }

    /// The gateway on `port`, ready to take events (waits for `/readyz`).
    pub async fn gateway(nats_url: &str, port: u16) -> anyhow::Result<Self> {
        Self::gateway_with(nats_url, port, &[]).await
    }

    /// [`Proc::gateway`] with `extra` flags.
    pub async fn gateway_with(nats_url: &str, port: u16, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_gateway(nats_url, port, extra, &binary("herald-gateway")?).await
    }

    /// [`Proc::gateway`] run from `dir` (another build, to compare).
    pub async fn gateway_from(nats_url: &str, port: u16, dir: &std::path::Path) -> anyhow::Result<Self> {
        Self::start_gateway(nats_url, port, &[], &dir.join("herald-gateway")).await
    }

    async fn start_gateway(nats_url: &str, port: u16, extra: &[&str], path: &std::path::Path) -> anyhow::Result<Self> {
        let mut args = common_flags(nats_url);
        args.extend(extra.iter().map(|s| s.to_string()));
        let tokens = format!("admin={},publish={}", herald_harness::ADMIN_TOKEN, herald_harness::PUBLISH_TOKEN);
        args.extend(["--listen".into(), format!("127.0.0.1:{port}"), "--tokens".into(), tokens]);
        let mut proc = Self::spawn_binary(path, &args)?;
        proc.metrics_url = Some(format!("http://127.0.0.1:{port}/metrics"));
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                anyhow::bail!(
                    "the gateway exited ({status}) before it was ready; the end of {}:\n{}",
                    proc.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            let ready = http.get(format!("http://127.0.0.1:{port}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(proc);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway did not become ready (its log: {})",
                proc.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A dispatcher with the production defaults, plus `extra` flags.
    pub fn dispatcher(nats_url: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::dispatcher_from(nats_url, extra, None)
    }

    /// [`Proc::dispatcher`], run from `binary` if given (another build, to compare).
    pub fn dispatcher_from(
        nats_url: &str,
        extra: &[&str],
        binary_path: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut args = common_flags(nats_url);
        let port = herald_harness::free_port();
        args.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let path = match binary_path {
            Some(p) => p.to_owned(),
            None => binary("herald-dispatcher")?,
        };
        let mut proc = Self::spawn_binary(&path, &args)?;
        proc.metrics_url = Some(format!("http://127.0.0.1:{port}/metrics"));
        Ok(proc)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the process where it is (`SIGSTOP`), or lets it go on (`SIGCONT`): what was sent
    /// to it meanwhile waits in its sockets, as behind a process that lost its CPU for a while.
    pub fn hold(&self, held: bool) -> anyhow::Result<()> {
        let signal = if held { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill").args([signal, &self.pid().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {} failed: {status}", self.pid());
        Ok(())
    }

    /// Waits until its `/readyz` answers 2xx (a dispatcher: subscriptions loaded, consuming).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = self.metrics_url.as_deref().context("no health address")?.replace("/metrics", "/readyz");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "{url} did not become ready (its log: {})", self.log.display());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The sum of a counter's series in the process's `/metrics`: all of them for a bare name,
    /// one for a name with its labels (`name{label="value"}`); 0 if unreadable.
    pub async fn counter(&self, http: &reqwest::Client, name: &str) -> f64 {
        let Some(url) = &self.metrics_url else { return 0.0 };
        let Ok(resp) = http.get(url).send().await else { return 0.0 };
        herald_harness::metric_sum(&resp.text().await.unwrap_or_default(), name)
    }

    /// CPU time (user + system) the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.child.id().to_string())
    }

    /// Current and peak resident memory.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Memory { rss_kib: field("VmRSS:"), peak_kib: field("VmHWM:") }
    }

    /// Stops the process with SIGTERM (a dispatcher finishes what it holds), killing it if it
    /// has not exited within 30 s.
    pub async fn stop(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// CPU time (user + system) process `pid` (`self`: this one) has used so far, in seconds; 0 if
/// it cannot be read.
pub fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces; utime and
    // stime are the 14th and 15th fields, in clock ticks (100 per second on Linux).
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2).filter_map(|t| t.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    ticks as f64 / 100.0
}

/// CPU time every process of process group `pgid` has used so far, in seconds (a broker whose
/// start script runs the server as a child).
pub fn group_cpu_seconds(pgid: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The process group is the 5th field, the 3rd after the command name.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok())
                == Some(pgid)
        })
        .map(|pid| cpu_seconds(&pid.to_string()))
        .sum()
}

/// CPU time the whole machine has spent busy (not idle or waiting) so far, in seconds.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal …
    let busy: u64 = ticks.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| *t).sum();
    busy as f64 / 100.0
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
