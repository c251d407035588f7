//! Memory with deliveries in flight: a dispatcher holding `--in-flight` deliveries to a receiver
//! that answers after `--slow-ms`, under its defaults and with every delivery open at once.

use std::time::Duration;

use crate::Bench;
use crate::procs::Proc;

/// What the slow-receiver measurement found.
pub(crate) struct InFlight {
    pub(crate) deliveries: usize,
    pub(crate) slow_ms: u64,
    /// `(flags, requests held by the receiver at most, peak RSS KiB)` per dispatcher set-up.
    pub(crate) runs: Vec<(String, i64, u64)>,
}

impl Bench {
    /// A fresh dispatcher holding `in_flight` deliveries (100 subscriptions) to a receiver that
    /// holds each request `slow_ms`: with its defaults, and sized to have every one of them
    /// open as an HTTP request at once.
    pub(crate) async fn in_flight_memory(&mut self) -> anyhow::Result<InFlight> {
        let subs = 100.min(self.args.in_flight);
        let group = self.subscribe(subs).await?;
        let per_sub = (self.args.in_flight / subs).max(1);
        let deliveries = per_sub * subs;
        let everything = deliveries.to_string();
        let per_sub_text = per_sub.to_string();
        let setups: [(String, Vec<&str>); 2] = [
            ("defaults".into(), vec![]),
            (
                format!("--concurrency {deliveries} --subscription-concurrency {per_sub}"),
                vec!["--concurrency", &everything, "--subscription-concurrency", &per_sub_text],
            ),
        ];
        let mut runs = Vec::new();
        for (name, flags) in setups {
            let dispatcher = Proc::dispatcher(&self.nats.url(), &flags)?;
            self.warm_up(&group).await?;
            self.sink.set_delay(Duration::from_millis(self.args.slow_ms));
            self.sink.take_max_in_flight();
            let target = self.sink.delivered(group.paths.clone()) + deliveries as u64;
            self.publish_events(&group, per_sub, 256).await?;
            self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(60)).await?;
            runs.push((name, self.sink.take_max_in_flight(), dispatcher.memory().peak_kib));
            self.sink.set_delay(Duration::ZERO);
            dispatcher.stop().await;
        }
        Ok(InFlight { deliveries, slow_ms: self.args.slow_ms, runs })
    }
}
