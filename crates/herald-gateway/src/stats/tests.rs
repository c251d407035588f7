//! Unit tests of `stats`.

use super::*;

fn entry(at: i64, sub: &str, tenant: &str, outcome: &str, ms: u64) -> proto::StatsEntry {
    let mut e = proto::StatsEntry {
        at: at - at.rem_euclid(60),
        subscription_id: sub.into(),
        tenant: tenant.into(),
        attempts: 1,
        latency_ms_total: ms,
        ..Default::default()
    };
    match outcome {
        "delivered" => e.delivered = 1,
        "retry" => e.failed = 1,
        _ => e.dead_lettered = 1,
    }
    e
}

fn delta(entries: Vec<proto::StatsEntry>) -> proto::StatsDelta {
    proto::StatsDelta { replica: "d1".into(), entries }
}

fn hour(at: i64) -> i64 {
    at - at.rem_euclid(3600)
}

#[test]
fn counts_land_in_their_minute_and_hour_and_old_ones_are_pruned() {
    let stats = Stats::new(Duration::from_secs(24 * 3600));
    let now = 1_800_000_000 + 1830; // an hour starts at 1_800_000_000; this is half past
    let events = proto::StatsEntry { at: now - 60, tenant: "acme".into(), events_in: 1, ..Default::default() };
    stats.apply_delta(
        1,
        hour(now),
        &delta(vec![
            entry(now - 10, "s1", "acme", "delivered", 20),
            entry(now - 70, "s1", "acme", "retry", 100),
            events,
        ]),
        now,
    );
    stats.apply_delta(2, hour(now - 7200), &delta(vec![entry(now - 7200, "s2", "acme", "dead_letter", 5)]), now);
    stats.apply_delta(3, hour(now), &delta(vec![entry(now - 5, "s3", "zeta", "delivered", 1)]), now);
    let minutes = stats.series(Of::Subscription("s1"), Interval::Minute, None, now);
    assert_eq!(minutes.len(), 60);
    let last = minutes.last().unwrap().1;
    assert_eq!((last.attempts, last.delivered, last.latency_ms_total), (1, 1, 20));
    assert_eq!(minutes[58].1.failed, 1);
    let acme = total(&stats.series(Of::Tenant("acme"), Interval::Hour, None, now));
    assert_eq!((acme.events_in, acme.attempts, acme.delivered, acme.failed, acme.dead_lettered), (1, 3, 1, 1, 1));
    let all = total(&stats.series(Of::All, Interval::Hour, None, now));
    assert_eq!((all.attempts, all.delivered), (4, 2));
    // The two-hour-old one is beyond the minute series but within the hour series.
    assert_eq!(total(&stats.series(Of::Subscription("s2"), Interval::Minute, None, now)).attempts, 0);
    assert_eq!(total(&stats.series(Of::Subscription("s2"), Interval::Hour, None, now)).dead_lettered, 1);
    // A day later everything has aged out.
    stats.prune(now + 25 * 3600);
    assert!(stats.lock().by_subscription.is_empty());
    assert!(stats.lock().hours.is_empty());
    assert_eq!(stats.tenant_totals().len(), 0);
}

#[test]
fn an_hour_is_sealed_once_over_and_a_seal_read_back_counts_the_same_plus_later_deltas() {
    let now = 1_800_000_000 + 3 * 3600 + 600;
    let old = 1_800_000_000; // three hours ago: beyond the minutes kept
    let live = Stats::new(Duration::from_secs(24 * 3600));
    live.apply_delta(5, old, &delta(vec![entry(old + 100, "s1", "acme", "delivered", 10)]), old + 200);
    live.apply_delta(9, old, &delta(vec![entry(old + 3500, "s1", "acme", "retry", 30)]), old + 3590);
    live.apply_delta(10, old + 3600, &delta(vec![entry(old + 3601, "s1", "acme", "delivered", 1)]), old + 3700);
    // Not over for long enough yet: nothing to seal.
    assert!(live.due_seals(old + 3600 + SEAL_AFTER - 1).is_empty());
    let due = live.due_seals(now);
    assert_eq!(due.iter().map(|d| (d.0, d.1)).collect::<Vec<_>>(), vec![(old, 9), (old + 3600, 10)]);
    let (_, through, entries) = &due[0];
    assert_eq!(entries.len(), 1);
    assert_eq!(
        (entries[0].attempts, entries[0].delivered, entries[0].failed, entries[0].latency_ms_total),
        (2, 1, 1, 40)
    );
    live.sealed(old);
    assert_eq!(live.due_seals(now).len(), 1, "sealed once");

    // A gateway started later reads the seal, then a delta stored after it: counted on top;
    // one the seal took in is not counted twice.
    let restarted = Stats::new(Duration::from_secs(24 * 3600));
    restarted.apply_seal(old, *through, entries);
    assert_eq!(restarted.sealed_through(old), Some(9));
    restarted.apply_delta(9, old, &delta(vec![entry(old + 3500, "s1", "acme", "retry", 30)]), now);
    restarted.apply_delta(12, old, &delta(vec![entry(old + 3599, "s1", "acme", "delivered", 2)]), now);
    let hours = restarted.series(Of::Subscription("s1"), Interval::Hour, None, now);
    let at_old = hours.iter().find(|(t, _)| *t == old).unwrap().1;
    assert_eq!((at_old.attempts, at_old.delivered, at_old.failed), (3, 2, 1));
    assert!(restarted.due_seals(now).is_empty(), "a read seal is not made again");
}

#[test]
fn tenants_beyond_the_cap_are_counted_together() {
    let stats = Stats::new(Duration::from_secs(3600));
    stats.cap_tenants(3);
    let now = 1_800_000_000 + 1830;
    let events =
        |tenant: &str| proto::StatsEntry { at: now - 60, tenant: tenant.into(), events_in: 1, ..Default::default() };
    let entries = (0..10).map(|i| events(&format!("t{i}"))).collect();
    stats.apply_delta(1, hour(now), &delta(entries), now);
    let totals = stats.tenant_totals();
    assert_eq!(totals.len(), 4, "three tenants and (other): {:?}", totals.keys().collect::<Vec<_>>());
    assert_eq!(totals[herald_core::OTHER_TENANTS].events_in, 7);
    assert_eq!(totals.values().map(|c| c.events_in).sum::<u64>(), 10, "nothing lost");
    // A tenant that has a series keeps adding to it.
    stats.apply_delta(2, hour(now), &delta(vec![events("t0")]), now);
    assert_eq!(stats.tenant_totals()["t0"].events_in, 2);
}

#[test]
fn circuits_open_per_replica_and_close() {
    let stats = Stats::new(Duration::from_secs(3600));
    let now = OffsetDateTime::parse("2026-01-01T00:30:00Z", &time::format_description::well_known::Rfc3339)
        .unwrap()
        .unix_timestamp();
    let sub = "sub_01JABCDEFGHJKMNPQRSTVWXYZ0";
    let ev = |kind: &str, replica: &str, at: &str| circuit_event(kind, sub, replica, at, "https://x");
    stats.record_circuit(&ev("opened", "d1", "2026-01-01T00:00:02Z"), Written::ByHerald, now);
    stats.record_circuit(&ev("opened", "d2", "2026-01-01T00:00:01Z"), Written::Unknown, now);
    let open = stats.open_circuits();
    assert_eq!(open.len(), 1);
    assert_eq!((open[0].replicas.len(), open[0].since.as_str()), (2, "2026-01-01T00:00:01Z"));
    stats.record_circuit(&ev("closed", "d1", "2026-01-01T00:01:00Z"), Written::ByHerald, now);
    assert_eq!(stats.open_circuits()[0].replicas, vec!["d2".to_string()]);
    // A forged close does not hide the circuit; the real one does.
    stats.record_circuit(&ev("closed", "d2", "2026-01-01T00:01:00Z"), Written::Forged, now);
    assert_eq!(stats.open_circuits().len(), 1);
    stats.record_circuit(&ev("closed", "d2", "2026-01-01T00:01:00Z"), Written::ByHerald, now);
    assert!(stats.open_circuits().is_empty());
}

fn circuit_event(kind: &str, sub: &str, replica: &str, at: &str, url: &str) -> proto::Event {
    proto::Event {
        r#type: format!("circuit.{kind}"),
        data: serde_json::to_vec(&serde_json::json!({
            "subscription_id": sub, "tenant": "acme", "url": url, "replica": replica, "at": at
        }))
        .unwrap(),
        ..Default::default()
    }
}

#[test]
fn circuits_kept_are_bounded_checked_and_pruned() {
    let stats = Stats::new(Duration::from_secs(3600));
    let now = 1_800_000_000;
    let at = |t: i64| {
        OffsetDateTime::from_unix_timestamp(t).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap()
    };
    let sub = |i: usize| format!("sub_{}", ulid::Ulid::from_parts(i as u64, 7));
    // Forged opens, strings too long, ids that do not parse, times outside the window: none kept.
    let huge = "x".repeat(250 * 1024);
    for (event, written) in [
        (circuit_event("opened", &sub(1), "d1", &at(now), "https://x"), Written::Forged),
        (circuit_event("opened", &sub(1), &huge, &at(now), "https://x"), Written::ByHerald),
        (circuit_event("opened", &sub(1), "d1", &at(now), &huge), Written::ByHerald),
        (circuit_event("opened", "not-a-sub", "d1", &at(now), "https://x"), Written::ByHerald),
        (circuit_event("opened", &sub(1), "d1", &at(now - 7200), "https://x"), Written::ByHerald),
        (circuit_event("opened", &sub(1), "d1", "yesterday", "https://x"), Written::ByHerald),
    ] {
        stats.record_circuit(&event, written, now);
    }
    assert!(stats.open_circuits().is_empty());
    // At most MAX_CIRCUITS subscriptions.
    for i in 0..MAX_CIRCUITS + 50 {
        stats.record_circuit(&circuit_event("opened", &sub(i), "d1", &at(now), "https://x"), Written::ByHerald, now);
    }
    assert_eq!(stats.open_circuits().len(), MAX_CIRCUITS);
    // Pruned: those of subscriptions gone, and those opened before the window.
    stats.prune_circuits(now, |s| s != sub(0));
    assert_eq!(stats.open_circuits().len(), MAX_CIRCUITS - 1);
    stats.prune_circuits(now + 3601, |_| true);
    assert!(stats.open_circuits().is_empty());
}
