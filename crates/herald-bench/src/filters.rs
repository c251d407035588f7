//! What payload filters cost: fan-out to 100 subscriptions of one type, each with a filter of
//! five conditions (all of which hold, so the deliveries are the same), against the same
//! fan-out without filters, measured in pairs on one dispatcher.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::procs::Proc;
use crate::{Bench, Group, median, per_sec, pipelined};

/// Five conditions over the event's fields and data, all holding for the benchmark's events.
fn five_conditions() -> Value {
    json!({
        "type": {"$startsWith": "bench."},
        "tenant": "default",
        "id": {"$neq": ""},
        "data": {"blob": {"$exist": true}},
        "$or": [{"data": {"blob": {"$startsWith": "x"}}}, {"source": "elsewhere"}],
    })
}

impl Bench {
    /// The filter measurement for one payload size.
    pub(crate) async fn filter_cost(&mut self, payload: usize) -> anyhow::Result<()> {
        const SUBS: usize = 100;
        let plain = self.subscribe(SUBS).await?;
        let filtered = self.subscribe_with(SUBS, json!({"filter": five_conditions()})).await?;
        let dispatcher = Proc::dispatcher(&self.nats.url(), &[])?;
        dispatcher.wait_ready().await?;
        self.warm_up(&plain).await?;
        self.warm_up(&filtered).await?;
        let events = (self.args.events / SUBS).max(10);
        let (mut with, mut without, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        // A warm-up pair, then the measured pairs, alternating which goes first.
        for run in 0..=self.args.runs {
            let n = if run == 0 { (events / 5).max(1) } else { events };
            let (f, p) = if run % 2 == 0 {
                let f = self.drain(&filtered, n, payload).await?;
                (f, self.drain(&plain, n, payload).await?)
            } else {
                let p = self.drain(&plain, n, payload).await?;
                (self.drain(&filtered, n, payload).await?, p)
            };
            if run > 0 {
                with.push(f);
                without.push(p);
                ratios.push(f / p);
            }
        }
        let filtered_out = dispatcher.counter(&self.http, "herald_filtered_out_total").await;
        dispatcher.stop().await;
        anyhow::ensure!(
            filtered_out == 0.0,
            "the benchmark's filters should match every event ({filtered_out} left out)"
        );
        let rate = median(with);
        self.rows.push(crate::Row {
            payload,
            name: format!("fan-out to {SUBS} subscriptions, each with a five-condition filter"),
            value: rate,
            unit: "deliveries/s",
            ratio: Some((median(ratios), "no filters")),
            of_relay: None,
        });
        self.push(payload, "  the same fan-out without filters", median(without), "deliveries/s");
        Ok(())
    }

    /// `n` events of `group`'s type published, until every subscription of the group has them;
    /// deliveries/s.
    pub(crate) async fn drain(&mut self, group: &Group, n: usize, payload: usize) -> anyhow::Result<f64> {
        let deliveries = n * group.paths.len();
        let target = self.sink.delivered(group.paths.clone()) + deliveries as u64;
        let messages = self.events_for(group, n, payload);
        let started = Instant::now();
        pipelined(&self.js, messages).await?;
        let done = self.sink.wait_delivered(group.paths.clone(), target, Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        use herald_core::nats::{ATTEMPTS_STREAM, DELIVERIES_STREAM, EVENTS_STREAM};
        self.settle(&[EVENTS_STREAM, DELIVERIES_STREAM, ATTEMPTS_STREAM]).await?;
        Ok(per_sec(deliveries, done - started))
    }
}
