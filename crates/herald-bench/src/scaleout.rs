//! Scale-out: one backlog drained by 1, 2, 3, … dispatcher replicas, each held to a fixed CPU
//! share in a cgroup of its own, as a pod's CPU limit holds it. On a machine whose few cores
//! every process shares, raw throughput cannot show what another replica adds; capped replicas
//! leave nats-server, the receiver and the publisher their headroom, so N of them should drain
//! the backlog N times as fast as one, each making 1/N of the attempts.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::procs::Proc;
use crate::{Bench, Group, per_sec, pipelined};

/// A cgroup that holds its processes to a share of one CPU; removed when dropped (its
/// processes must have exited by then).
pub struct CpuCap {
    dir: PathBuf,
}

/// Which cgroup interface caps the CPU here, and where groups are made.
#[derive(Debug, Clone, Copy)]
pub enum Cgroups {
    /// cgroup v1: `cpu.cfs_quota_us` under `/sys/fs/cgroup/cpu/`.
    V1,
    /// cgroup v2: `cpu.max` under `/sys/fs/cgroup/`.
    V2,
}

impl Cgroups {
    /// The interface this machine offers, if this process may make groups (as root).
    pub fn detect() -> anyhow::Result<Self> {
        let writable = |p: &str| std::fs::metadata(p).is_ok_and(|m| !m.permissions().readonly());
        if std::path::Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() && writable("/sys/fs/cgroup/cpu") {
            return Ok(Self::V1);
        }
        let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") && writable("/sys/fs/cgroup") {
            return Ok(Self::V2);
        }
        anyhow::bail!("no writable cgroup with a CPU controller (run as root on cgroup v1 or v2)")
    }

    /// How it is described in the results.
    pub fn describe(self) -> &'static str {
        match self {
            Self::V1 => "cgroup v1 cpu.cfs_quota_us",
            Self::V2 => "cgroup v2 cpu.max",
        }
    }

    /// A new group named `name` allowing `cpus` of a CPU.
    pub fn cap(self, name: &str, cpus: f64) -> anyhow::Result<CpuCap> {
        const PERIOD_US: u64 = 100_000;
        let quota = ((cpus * PERIOD_US as f64) as u64).max(1_000);
        let (dir, files) = match self {
            Self::V1 => (
                PathBuf::from("/sys/fs/cgroup/cpu").join(name),
                vec![("cpu.cfs_period_us", PERIOD_US.to_string()), ("cpu.cfs_quota_us", quota.to_string())],
            ),
            Self::V2 => {
                // The controller must be handed down to children of the root first.
                let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
                (PathBuf::from("/sys/fs/cgroup").join(name), vec![("cpu.max", format!("{quota} {PERIOD_US}"))])
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, value) in files {
            std::fs::write(dir.join(file), value).with_context(|| format!("writing {}/{file}", dir.display()))?;
        }
        Ok(CpuCap { dir })
    }
}

impl CpuCap {
    /// Moves process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", self.dir.display()))
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Bench {
    /// The scale-out measurement for one payload size: for each replica count, that many capped
    /// dispatchers drain `--scale-backlog` events of one subscription, `--runs` times after a
    /// warm-up; deliveries/s (median), the factor over one replica, and each replica's share
    /// of the attempts.
    pub(crate) async fn scale_out(&mut self, group: &Group, payload: usize) -> anyhow::Result<()> {
        let (cpus, backlog) = (self.args.scale_cpu, self.args.scale_backlog);
        let cgroups = match Cgroups::detect() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("scale-out: replicas run uncapped, so the figures say little: {e}");
                None
            }
        };
        let how = cgroups.map_or("uncapped".to_owned(), |c| format!("{cpus:.2} CPU each, {}", c.describe()));
        let mut one_replica = None;
        for &replicas in &self.args.scale_replicas.clone() {
            let mut dispatchers = Vec::new();
            let mut caps = Vec::new();
            for i in 0..replicas {
                let proc = Proc::dispatcher_from(&self.nats.url(), &[], self.args.dispatcher_binary.as_deref())?;
                if let Some(cgroups) = cgroups {
                    let cap = cgroups.cap(&format!("herald-bench-{}-{i}", std::process::id()), cpus)?;
                    cap.add(proc.pid())?;
                    caps.push(cap);
                }
                dispatchers.push(proc);
            }
            for d in &dispatchers {
                d.wait_ready().await?;
            }
            self.warm_up(group).await?;
            let (mut rates, mut shares) = (Vec::new(), vec![0.0; replicas]);
            // A warm-up with a fifth of the backlog, then the measured runs.
            let runs = std::iter::once((backlog / 5).max(1)).chain(std::iter::repeat_n(backlog, self.args.runs));
            for (run, n) in runs.enumerate() {
                let mut before = Vec::new();
                for d in &dispatchers {
                    before.push(d.counter(&self.http, "herald_delivery_attempts_total").await);
                }
                let target = self.sink.delivered(group.paths.clone()) + n as u64;
                let messages = self.events_for(group, n, payload);
                let started = Instant::now();
                pipelined(&self.js, messages).await?;
                let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(60)).await?;
                if run > 0 {
                    rates.push(per_sec(n, done - started));
                    // Attempts are counted as they are recorded, a moment after the receipt.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    for (i, d) in dispatchers.iter().enumerate() {
                        shares[i] += d.counter(&self.http, "herald_delivery_attempts_total").await - before[i];
                    }
                }
                use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
                self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;
            }
            for d in dispatchers {
                d.stop().await;
            }
            drop(caps);
            let rate = crate::median(rates);
            let base = *one_replica.get_or_insert(rate);
            let total: f64 = shares.iter().sum();
            let percent: Vec<String> = shares.iter().map(|s| format!("{:.0}", 100.0 * s / total)).collect();
            let setup = format!("{replicas} dispatcher{}", if replicas == 1 { "" } else { "s" });
            let name = format!("scale-out, {setup} ({how}), backlog of {backlog}");
            self.rows.push(crate::Row {
                payload,
                name,
                value: rate,
                unit: "deliveries/s",
                ratio: Some((rate / base, "1 dispatcher")),
                of_relay: None,
            });
            let smallest = shares.iter().copied().fold(f64::INFINITY, f64::min) / total;
            let name = format!("  attempts by each replica, {setup}: {} %", percent.join(" / "));
            self.push(payload, name, 100.0 * smallest, "% (smallest)");
        }
        Ok(())
    }
}
