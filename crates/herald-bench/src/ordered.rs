//! What order costs: one FIFO subscription and one dispatcher, fed a backlog published at once.
//! The ordered fan-out stores each event in the subscription's lane, one event out at a time,
//! and the lane sends one delivery at a time, so this is a round-trip figure, not a parallel
//! one: compare it with the end-to-end row of one unordered subscription.

use serde_json::json;

use crate::procs::Proc;
use crate::{Bench, median};

impl Bench {
    /// The ordered measurement for one payload size: deliveries/s and the dispatcher's CPU per
    /// delivery, medians of the measured runs after a warm-up.
    pub(crate) async fn ordered(&mut self, payload: usize) -> anyhow::Result<()> {
        let group = self.subscribe_with(1, json!({"ordering": "fifo"})).await?;
        let dispatcher = Proc::dispatcher(&self.nats.url(), &[])?;
        dispatcher.wait_ready().await?;
        // The ordered fan-out's filter follows the subscription within seconds.
        self.warm_up(&group).await?;
        let events = (self.args.events / 5).clamp(200, 2_000);
        let (mut rates, mut cpu, mut measured) = (Vec::new(), 0.0, 0);
        for run in 0..=self.args.runs {
            let n = if run == 0 { (events / 5).max(1) } else { events };
            let before = dispatcher.cpu_seconds();
            let rate = self.drain(&group, n, payload).await?;
            if run > 0 {
                rates.push(rate);
                cpu += dispatcher.cpu_seconds() - before;
                measured += n;
            }
        }
        dispatcher.stop().await;
        self.push(payload, "ordered: one FIFO subscription, 1 dispatcher", median(rates), "deliveries/s");
        self.push(payload, "  dispatcher CPU, ordered", cpu * 1e6 / measured as f64, "µs/delivery");
        Ok(())
    }
}
