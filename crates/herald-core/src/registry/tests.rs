//! Unit tests of `registry`.

use super::*;

/// `sub_` and a ULID of `n` (in order of `n`).
fn id(n: u32) -> String {
    format!("sub_{n:026}")
}

fn sub(tenant: &str, id: String, types: &[&str]) -> Subscription {
    Subscription {
        id,
        tenant: tenant.into(),
        enabled: true,
        event_types: types.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn tenants_are_separate_and_lists_are_ordered() {
    let r = Registry::new();
    r.upsert(1, sub("a", id(2), &["order.*"]));
    r.upsert(2, sub("a", id(1), &[">"]));
    r.upsert(3, sub("b", id(3), &["order.*"]));
    let ids = |v: Vec<Arc<Subscription>>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(r.matching("a", "order.paid")), [id(1), id(2)]);
    assert_eq!(ids(r.matching("b", "user.created")), Vec::<String>::new());
    assert_eq!(ids(r.list(None, None, 10)), [id(1), id(2), id(3)]);
    assert_eq!(ids(r.list(None, Some(&*id(1)), 1)), [id(2)]);
    assert_eq!(ids(r.list(Some("b"), None, 10)), [id(3)]);
    assert_eq!(r.find(&id(3)).unwrap().tenant, "b");
    r.remove("a", &id(1));
    assert!(r.get("a", &id(1)).is_none());
    assert_eq!(r.len(), 2);
}

#[test]
fn literal_types_and_wildcards_select_as_patterns_do() {
    let r = Registry::new();
    // Literal types only (compared whole), several of them, one a prefix of another type.
    r.upsert(1, sub("a", id(1), &["order.paid", "order.paid.v2"]));
    r.upsert(2, sub("a", id(2), &["order"]));
    // A wildcard among literal types: every pattern of it is matched as a pattern.
    r.upsert(3, sub("a", id(3), &["user.created", "order.*"]));
    r.upsert(4, sub("a", id(4), &["order.>"]));
    let mut off = sub("a", id(5), &["order.paid"]);
    off.enabled = false;
    r.upsert(5, off);
    let ids = |t: &str| r.matching("a", t).iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids("order.paid"), [id(1), id(3), id(4)]);
    assert_eq!(ids("order.paid.v2"), [id(1), id(4)]);
    assert_eq!(ids("order"), [id(2)]);
    assert_eq!(ids("order.pai"), [id(3), id(4)]);
    assert_eq!(ids("user.created"), [id(3)]);
    assert_eq!(ids("user.created.x"), Vec::<String>::new());
    assert_eq!(ids("orde"), Vec::<String>::new());
}

#[test]
fn payload_filters_choose_among_the_subscriptions_of_a_type() {
    let r = Registry::new();
    let mut big = sub("a", id(1), &["order.*"]);
    big.filter = r#"{"data": {"amount": {"$gte": 100}}}"#.into();
    let mut eu = sub("a", id(2), &["order.*"]);
    eu.filter = r#"{"data": {"region": "eu"}}"#.into();
    r.upsert(1, big);
    r.upsert(2, eu);
    r.upsert(3, sub("a", id(3), &["order.*"]));
    let event = |data: &str| Event {
        tenant: "a".into(),
        r#type: "order.paid".into(),
        data: data.as_bytes().to_vec(),
        ..Default::default()
    };
    let ids = |m: Matched| (m.subs.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), m.filtered_out);
    assert_eq!(ids(r.matching_event(&event(r#"{"amount": 500, "region": "us"}"#))), (vec![id(1), id(3)], 1));
    assert_eq!(ids(r.matching_event(&event(r#"{"amount": 5, "region": "eu"}"#))), (vec![id(2), id(3)], 1));
    assert_eq!(ids(r.matching_event(&event("not json"))), (vec![id(3)], 2));
}

#[test]
fn older_revisions_do_not_overwrite_newer() {
    let r = Registry::new();
    let mut s = sub("a", id(1), &["x"]);
    s.url = "new".into();
    r.upsert(5, s.clone());
    s.url = "old".into();
    r.upsert(4, s);
    assert_eq!(r.get("a", &id(1)).unwrap().url, "new");
}

#[test]
fn a_list_of_every_tenant_is_in_id_order_across_tenants_and_pages() {
    let r = Registry::new();
    // Ids interleaved over tenants, stored out of order.
    for n in (0..300).rev() {
        r.upsert(u64::from(n) + 1, sub(&format!("t{}", n % 7), id(n), &["x"]));
    }
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = r.list(None, after.as_deref(), 50);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|s| s.id.clone());
        all.extend(page.iter().map(|s| s.id.clone()));
    }
    assert_eq!(all, (0..300).map(id).collect::<Vec<_>>());
    let t3: Vec<_> = r.list(Some("t3"), Some(&id(100)), 3).iter().map(|s| s.id.clone()).collect();
    assert_eq!(t3, [id(101), id(108), id(115)]);
    assert_eq!(r.tenant_counts()["t3"], TenantCount { subscriptions: 43, disabled: 0 });
}

#[test]
fn a_subscription_comes_back_as_it_was_stored_and_decoded_once_per_revision() {
    let r = Registry::new();
    let mut s = sub("a", id(1), &["order.*", "user.>"]);
    s.url = "https://example.com/hook".into();
    s.headers.insert("x-team".into(), "billing".into());
    s.metadata.insert("plan".into(), "pro".into());
    s.secrets.push(crate::proto::SigningSecret {
        secret: "sealed".into(),
        expires_at: "2030-01-01T00:00:00Z".into(),
        ..Default::default()
    });
    s.client_certificate = Some(crate::proto::ClientCertificate { subject: "CN=a".into(), ..Default::default() });
    s.rate_limit = 7;
    s.filter = r#"{"data": {"x": 1}}"#.into();
    s.created_at = "2026-12-06T01:00:00Z".into();
    s.enabled = false;
    r.upsert(1, s.clone());
    let first = r.get("a", &id(1)).unwrap();
    assert_eq!(*first, s);
    assert!(Arc::ptr_eq(&first, &r.find(&id(1)).unwrap()), "the same revision is decoded once");
    assert!(r.matching("a", "order.paid").is_empty(), "disabled");
    assert_eq!(r.tenant_counts()["a"], TenantCount { subscriptions: 1, disabled: 1 });
    s.enabled = true;
    r.upsert(2, s.clone());
    let second = r.get("a", &id(1)).unwrap();
    assert!(!Arc::ptr_eq(&first, &second) && second.enabled);
    assert_eq!(r.matching("a", "user.created.eu").len(), 1);
    assert!(r.contains("a", &id(1)) && !r.contains("b", &id(1)));
    // Ids the API never makes are refused, not half-kept.
    r.upsert(3, sub("a", "sub_1".into(), &["x"]));
    assert_eq!(r.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn only_ordered_limited_or_lately_changed_subscriptions_are_notable() {
    let r = Registry::new();
    r.upsert(1, sub("a", id(1), &["x"]));
    let mut limited = sub("a", id(2), &["x"]);
    limited.rate_limit = 5;
    r.upsert(2, limited);
    let mut fifo = sub("b", id(3), &["x"]);
    fifo.ordering = "fifo".into();
    r.upsert(3, fifo.clone());
    let ids = |v: Vec<Arc<Subscription>>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(r.notable()), [id(2), id(3)]);
    // No longer ordered: notable while the change is remembered, then not.
    fifo.ordering.clear();
    r.upsert(4, fifo);
    assert!(r.ordering_changed_within(&id(3), Duration::from_secs(1)));
    assert_eq!(ids(r.notable()), [id(2), id(3)]);
    tokio::time::sleep(ORDERING_CHANGE_KEPT).await;
    assert!(!r.ordering_changed_within(&id(3), Duration::from_secs(1)));
    assert_eq!(ids(r.notable()), [id(2)]);
    r.remove("a", &id(2));
    assert!(r.notable().is_empty());
}
