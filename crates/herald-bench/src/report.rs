//! The report: the table on stdout and everything, with the machine's description, as JSON.

use serde_json::{Value, json};

use crate::Bench;
use crate::memory::InFlight;
use crate::procs;

impl Bench {
    pub(crate) fn report(
        &self,
        memory: &[(&str, u64)],
        in_flight: &InFlight,
        gateway_idle: procs::Memory,
        [deferrals, retries, inline, fanned_out]: [f64; 4],
    ) -> anyhow::Result<()> {
        println!(
            "{:>7}  {:<60} {:>12} {:<13} {:>6}  {:<16} {:>8}",
            "payload", "measurement", "value", "unit", "ratio", "of", "of relay"
        );
        for r in &self.rows {
            let (ratio, of) = r.ratio.map(|(x, of)| (format!("{x:.2}"), of)).unwrap_or(("".into(), ""));
            let relay = r.of_relay.map(|x| format!("{x:.2}")).unwrap_or_default();
            let value = if r.unit == "ms" || r.unit.starts_with("µs") {
                format!("{:.1}", r.value)
            } else if r.value.abs() < 10.0 && r.value.fract() != 0.0 {
                format!("{:.2}", r.value)
            } else {
                format!("{:.0}", r.value)
            };
            println!("{:>6}B  {:<60} {value:>12} {:<13} {ratio:>6}  {of:<16} {relay:>8}", r.payload, r.name, r.unit);
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        for (name, kib) in memory {
            println!("{:>7}  {name:<60} {:>12.1} MiB", "", mib(*kib));
        }
        for (flags, held, peak) in &in_flight.runs {
            println!(
                "{:>7}  dispatcher peak RSS, {} deliveries to a {} ms receiver ({flags}): {:.1} MiB, {held} requests open at most",
                "",
                in_flight.deliveries,
                in_flight.slow_ms,
                mib(*peak)
            );
        }
        println!(
            "bad signatures at the receiver: {}; deferrals: {deferrals}, retries: {retries} (end-to-end and latency runs)",
            self.sink.bad_signatures()
        );
        println!("first attempts made inline by fan-out: {inline} of {fanned_out} deliveries (the rest stored first)");
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "payload_bytes": r.payload, "measurement": r.name, "value": r.value, "unit": r.unit,
                    "ratio": r.ratio.map(|(x, _)| x), "ratio_of": r.ratio.map(|(_, of)| of),
                    "ratio_to_raw_relay": r.of_relay,
                })
            })
            .collect();
        let report = json!({
            "machine": machine(),
            "config": {
                "events": self.args.events, "payloads": self.args.payloads, "concurrency": self.args.concurrency,
                "batch_clients": self.args.batch_clients, "runs": self.args.runs, "smoke": self.args.smoke,
                "herald_log": std::env::var("HERALD_LOG").unwrap_or_else(|_| "info (the default)".into()),
            },
            "results": rows,
            "memory_kib": memory.iter().map(|(n, k)| json!({"measurement": n, "kib": k})).collect::<Vec<_>>(),
            "gateway_idle_rss_kib": gateway_idle.rss_kib,
            "in_flight": in_flight.runs.iter().map(|(flags, held, peak)| json!({
                "dispatcher_flags": flags, "deliveries": in_flight.deliveries, "receiver_delay_ms": in_flight.slow_ms,
                "max_requests_open": held, "dispatcher_peak_rss_kib": peak,
            })).collect::<Vec<_>>(),
            "bad_signatures": self.sink.bad_signatures(),
            "deferrals": deferrals,
            "retries": retries,
            "inline_first_attempts": inline,
            "fanned_out_deliveries": fanned_out,
        });
        if let Some(dir) = self.args.json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.args.json, serde_json::to_vec_pretty(&report)?)?;
        println!(
            "written to {}; the Herald processes' logs are in {}/",
            self.args.json.display(),
            crate::procs::LOG_DIR
        );
        Ok(())
    }
}

/// What the figures were measured on.
pub(crate) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|m| m.trim_start_matches([' ', '\t', ':']));
    let memory = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory": memory.lines().next(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}
