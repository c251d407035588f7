//! A dispatcher run as a real process (`target/<profile>/herald-dispatcher`), so a test can
//! SIGKILL or SIGTERM it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{dispatcher_args_with, free_port, metric_sum, target_bin};

/// A dispatcher running as a real process, so a test can SIGKILL it.
pub struct DispatcherProcess {
    child: Child,
    /// Its health and metrics address.
    listen: String,
}

impl DispatcherProcess {
    /// Starts `target/<profile>/herald-dispatcher` with [`dispatcher_args`].
    pub fn start(nats_url: &str) -> Self {
        Self::start_with(nats_url, &[])
    }

    /// Starts it with [`dispatcher_args_with`].
    pub fn start_with(nats_url: &str, overrides: &[(&str, &str)]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut overrides = overrides.to_vec();
        overrides.push(("--listen", &listen));
        let args = dispatcher_args_with(nats_url, &overrides);
        let child = Command::new(target_bin("herald-dispatcher"))
            .args(&args[1..])
            .env("HERALD_LOG", std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("HERALD_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("spawn herald-dispatcher");
        Self { child, listen }
    }

    /// Waits until it reports ready (`/readyz`: connected, subscriptions loaded, consuming).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.listen);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "dispatcher {} did not become ready", self.pid());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The sum of a metric's series in its `/metrics` (all labels), or `None` while unreachable.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.listen)).await.ok()?.text().await.ok()?;
        Some(metric_sum(&text, name))
    }

    /// Its whole `/metrics` text, or `None` while unreachable.
    pub async fn metrics_text(&self) -> Option<String> {
        reqwest::get(format!("http://{}/metrics", self.listen)).await.ok()?.text().await.ok()
    }

    /// Webhook attempts this replica has made (`herald_delivery_attempts_total`).
    pub async fn attempts(&self) -> f64 {
        self.metric("herald_delivery_attempts_total").await.unwrap_or(0.0)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to ack, nack or flush anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to a minute for the exit; returns whether it exited, successfully,
    /// in that time (a process still running then is killed).
    pub fn terminate(mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => return false,
            }
        }
        false
    }
}

impl Drop for DispatcherProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
