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
    /// The interface this machine offers, if this process may make groups (as root): a probe
    /// group is made and removed.
    pub fn detect() -> anyhow::Result<Self> {
        let controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let found = if std::path::Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            Self::V1
        } else if controllers.split_whitespace().any(|c| c == "cpu") {
            Self::V2
        } else {
            anyhow::bail!("no cgroup with a CPU controller under /sys/fs/cgroup (v1 or v2)")
        };
        let probe = found.cap(&format!("herald-bench-probe-{}", std::process::id()), 1.0)?;
        drop(probe);
        Ok(found)
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
            let (mut rates, mut shares, mut inline) = (Vec::new(), vec![0.0; replicas], 0.0);
            // CPU seconds the replicas used over the measured runs, and the wall time they took.
            let (mut cpu, mut wall) = (0.0, 0.0);
            const INLINE: &str = r#"herald_fanout_deliveries_total{path="inline"}"#;
            // A warm-up with a fifth of the backlog, then the measured runs.
            let runs = std::iter::once((backlog / 5).max(1)).chain(std::iter::repeat_n(backlog, self.args.runs));
            for (run, n) in runs.enumerate() {
                let (mut before, mut inline_before) = (Vec::new(), 0.0);
                for d in &dispatchers {
                    before.push(d.counter(&self.http, "herald_delivery_attempts_total").await);
                    inline_before += d.counter(&self.http, INLINE).await;
                }
                let target = self.sink.delivered(group.paths.clone()) + n as u64;
                let messages = self.events_for(group, n, payload);
                let cpu_before: f64 = dispatchers.iter().map(Proc::cpu_seconds).sum();
                let started = Instant::now();
                pipelined(&self.js, messages).await?;
                let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(60)).await?;
                if run > 0 {
                    cpu += dispatchers.iter().map(Proc::cpu_seconds).sum::<f64>() - cpu_before;
                    wall += (done - started).as_secs_f64();
                    rates.push(per_sec(n, done - started));
                    // Attempts are counted as they are recorded, a moment after the receipt.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    for (i, d) in dispatchers.iter().enumerate() {
                        shares[i] += d.counter(&self.http, "herald_delivery_attempts_total").await - before[i];
                        inline += d.counter(&self.http, INLINE).await;
                    }
                    inline -= inline_before;
                }
                use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
                self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;
            }
            // Events or deliveries handed out again (a replica held them past their ack wait,
            // or a consumer rewound) are checked against the records before they are sent: a
            // read of NATS each. Nothing fails here, so any check is a cost for nothing (a bug
            // once took a tenth of the stored deliveries for rewinds). A pull dropped (every
            // slot taken for half an ack wait) leaves its buffer to come back after its ack wait.
            let mut seen = [0.0; 4];
            for d in &dispatchers {
                for (i, name) in [
                    "herald_record_checks_total",
                    "herald_consumer_rewinds_total",
                    "herald_handed_out_again_total",
                    "herald_pulls_dropped_total",
                ]
                .into_iter()
                .enumerate()
                {
                    seen[i] += d.counter(&self.http, name).await;
                }
            }
            let [checks, rewinds, again, dropped] = seen;
            println!(
                "scale-out, {replicas} replica(s): {checks} record checks, {rewinds} rewinds, {again} handed out again, {dropped} pulls dropped"
            );
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
            let name = format!(
                "  attempts by each replica, {setup}: {} % ({:.0} % first attempts inline)",
                percent.join(" / "),
                100.0 * inline / total
            );
            self.push(payload, name, 100.0 * smallest, "% (smallest)");
            // How much of their quota the replicas used, and what a delivery cost them: a
            // replica that leaves quota unused is waiting, not working.
            let used = cpu / (wall * cpus * replicas as f64);
            self.push(payload, format!("  dispatcher CPU used of the quota, {setup}"), 100.0 * used, "%");
            self.push(payload, format!("  dispatcher CPU, {setup}"), cpu * 1e6 / total, "µs/delivery");
            self.push(payload, format!("  record checks (nothing failed: 0 expected), {setup}"), checks, "checks");
        }
        Ok(())
    }
}
