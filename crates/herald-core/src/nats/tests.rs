//! Unit tests of `nats`.

use super::*;

#[test]
fn server_versions() {
    check_server_version("2.12.0").unwrap();
    check_server_version("2.15.1").unwrap();
    check_server_version("v3.0.0").unwrap();
    check_server_version("2.14.0-beta.1").unwrap();
    assert!(matches!(check_server_version("2.9.25"), Err(BootstrapError::ServerTooOld { .. })));
    assert!(matches!(check_server_version("2.11.9"), Err(BootstrapError::ServerTooOld { .. })));
    assert!(matches!(check_server_version(""), Err(BootstrapError::ServerTooOld { .. })));
}

#[test]
fn transient_and_definite_bootstrap_failures() {
    let create = |detail: &str| BootstrapError::Create { what: "stream X".into(), detail: detail.into() };
    assert!(create("jetstream request timed out").is_transient());
    assert!(create("JetStream system temporarily unavailable (10008)").is_transient());
    assert!(create("no suitable peers for placement (10005)").is_transient());
    assert!(BootstrapError::NoJetStream("timed out".into()).is_transient());
    assert!(!BootstrapError::NoJetStream("no responders".into()).is_transient());
    assert!(!create("subjects overlap with an existing stream (10065)").is_transient());
    assert!(!create("replicas > 1 not supported in non-clustered mode (10074)").is_transient());
    assert!(!BootstrapError::ServerTooOld { found: "2.9.0".into() }.is_transient());
}

#[tokio::test(start_paused = true)]
async fn until_ready_retries_what_may_pass_and_gives_up_on_what_will_not() {
    let mut calls = 0;
    let got = until_ready("a test", || {
        calls += 1;
        let n = calls;
        async move { if n < 4 { Err(BootstrapError::NoJetStream("request timed out".into())) } else { Ok(n) } }
    })
    .await;
    assert_eq!(got.unwrap(), 4);
    let mut calls = 0;
    let refused = until_ready("a test", || {
        calls += 1;
        async { Err::<(), _>(BootstrapError::NoJetStream("no responders".into())) }
    })
    .await;
    assert!(refused.is_err());
    assert_eq!(calls, 1);
}

#[test]
fn subjects() {
    assert_eq!(event_subject("t", "order.paid"), "herald.events.t.order.paid");
    assert_eq!(dlq_subject("t", "sub_1"), "herald.dlq.t.sub_1");
    assert_eq!(legacy_attempt_subject("t", "sub_1", "e:1"), "herald.attempts.t.sub_1.e:1");
}

#[test]
fn attempt_records_spread_over_sixteen_stable_partitions() {
    // FNV-1a 32 of "a" is 0xe40c292c, of "" 0x811c9dc5: the low four bits name the partition.
    assert_eq!(attempt_partition("a"), 'c');
    assert_eq!(attempt_partition(""), '5');
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..16_000 {
        *seen.entry(attempt_partition(&format!("evt_{i}"))).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 16, "{seen:?}");
    assert!(seen.values().all(|n| (800..1200).contains(n)), "evenly: {seen:?}");
}

#[test]
fn ordered_filters_leave_out_what_another_covers() {
    assert_eq!(ordered_filters(Partition::ZERO, []), vec![ORDERED_IDLE_FILTER]);
    assert_eq!(ordered_filters(Partition(2), []), vec!["herald.p2.events.$none"]);
    assert_eq!(ordered_filters(Partition(2), [("t", "a")]), vec!["herald.p2.events.t.a"]);
    let got = ordered_filters(
        Partition::ZERO,
        [
            ("t", "order.*"),
            ("t", "order.paid"),
            ("t", "order.*"),
            ("u", "order.paid"),
            ("t", "invoice.>"),
            ("t", "invoice.*.v2"),
            ("t", "a.*.c"),
            ("t", "a.b.*"),
        ],
    );
    assert_eq!(
        got,
        vec![
            "herald.events.t.a.*.c",
            "herald.events.t.a.b.*",
            "herald.events.t.invoice.>",
            "herald.events.t.order.*",
            "herald.events.u.order.paid",
        ]
    );
    assert_eq!(ordered_filters(Partition::ZERO, [("t", ">"), ("t", "x.y")]), vec!["herald.events.t.>"]);
}
