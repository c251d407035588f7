//! Property tests over hostile input (the fuzzing of the parsers, bounded so CI stays quick):
//! event parsing, type patterns, the SSRF URL check and signature verification never panic,
//! and what they accept keeps its invariants. `PROPTEST_CASES` raises the count for a soak.

use proptest::prelude::*;

use crate::event::{EventInput, StoredAt, decode_stored};
use crate::ids::{EventId, EventType};
use crate::pattern::{TypePattern, matches};

fn stored() -> StoredAt {
    StoredAt { sequence: 1, time: time::OffsetDateTime::UNIX_EPOCH }
}

/// The webhook body of an accepted event is JSON carrying exactly its fields and data.
fn body_is_the_event(e: &crate::proto::Event) -> Result<(), TestCaseError> {
    let body = crate::event::webhook_body(e).map_err(|err| TestCaseError::fail(err.to_string()))?;
    let parsed: serde_json::Value =
        serde_json::from_slice(&body).map_err(|err| TestCaseError::fail(format!("body is not JSON: {err}")))?;
    let data: serde_json::Value = serde_json::from_slice(&e.data).expect("accepted data is JSON");
    prop_assert_eq!(&parsed["id"], &serde_json::json!(e.id));
    prop_assert_eq!(&parsed["type"], &serde_json::json!(e.r#type));
    prop_assert_eq!(&parsed["timestamp"], &serde_json::json!(e.time));
    prop_assert_eq!(&parsed["tenant"], &serde_json::json!(e.tenant));
    prop_assert_eq!(&parsed["data"], &data);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn nats_events_never_panic(
        subject in "herald\\.events\\.[a-z.*>]{0,20}|.{0,40}",
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        json in any::<bool>(),
        msg_id in proptest::option::of(".{0,20}"),
    ) {
        let ct = json.then_some("application/json");
        if let Ok(e) = decode_stored(&subject, ct, msg_id.as_deref(), &payload, stored()) {
            prop_assert!(EventId::parse(&e.id).is_ok());
            prop_assert!(EventType::parse(&e.r#type).is_ok());
            prop_assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&e.data).is_ok());
            body_is_the_event(&e)?;
        }
    }

    #[test]
    fn http_events_never_panic(text in ".{0,200}") {
        if let Ok(input) = serde_json::from_str::<EventInput>(&text) {
            if let Ok(e) = input.validate() {
                prop_assert!(EventId::parse(&e.id).is_ok());
                body_is_the_event(&e)?;
            }
        }
    }

    #[test]
    fn structured_json_events(
        id in "[A-Za-z0-9_:.-]{0,10}",
        ty in "[a-z.*]{0,12}",
        tenant in "[a-z .]{0,6}",
    ) {
        let text = serde_json::json!({"id": id, "type": ty, "tenant": tenant, "data": {"k": [1, "x"]}}).to_string();
        let input: EventInput = serde_json::from_str(&text).unwrap();
        let valid = input.validate().is_ok();
        let expect = EventId::parse(&id).is_ok() && EventType::parse(&ty).is_ok() && crate::ids::TenantId::parse(&tenant).is_ok();
        prop_assert_eq!(valid, expect);
    }

    #[test]
    fn patterns_never_panic_and_select_themselves(p in "[a-z*>.]{0,16}", t in "[a-z.]{0,16}") {
        if let Ok(pattern) = TypePattern::parse(&p) {
            let _ = pattern.matches(&t);
            if EventType::parse(&p).is_ok() {
                prop_assert!(pattern.matches(&p), "a literal pattern selects its own type");
            }
            if let Ok(t) = EventType::parse(&t) {
                prop_assert!(matches(">", t.as_str()), "`>` selects every type");
            }
        }
    }

    #[test]
    fn url_checks_never_panic(text in ".{0,60}", host in "[0-9a-fx.:\\[\\]]{1,30}") {
        let policy = crate::ssrf::Policy::default();
        for candidate in [text.clone(), format!("http://{host}/"), format!("https://{host}:8080/x")] {
            if let Ok(url) = url::Url::parse(&candidate) {
                let _ = policy.check_url(&url);
                let _ = crate::subscription::validate_url(&candidate);
            }
        }
    }

    #[test]
    fn any_ip_is_judged_consistently(v4 in any::<u32>(), v6 in any::<u128>()) {
        let policy = crate::ssrf::Policy::default();
        let four = std::net::Ipv4Addr::from(v4);
        // An IPv4 address is refused exactly when it is in a forbidden class; its IPv4-mapped
        // spelling is refused whatever it is (it is a way around the rules, not a route).
        prop_assert_eq!(policy.check_ip(four.into()).is_err(), crate::ssrf::forbidden(four.into()).is_some());
        prop_assert!(policy.check_ip(four.to_ipv6_mapped().into()).is_err());
        let _ = policy.check_ip(std::net::Ipv6Addr::from(v6).into());
    }

    #[test]
    fn signature_verification_never_panics_nor_accepts_garbage(
        id in ".{0,20}",
        ts in ".{0,14}",
        sig in ".{0,120}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let verifier = herald_signature::Verifier::new(herald_signature::Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap());
        prop_assert!(verifier.verify_at(Some(&id), Some(&ts), Some(&sig), &body, 1_614_265_330).is_err());
        let _ = herald_signature::Secret::parse(&sig);
    }

    #[test]
    fn filters_never_panic_and_explain_agrees_with_matching(filter in json_value(), data in json_value()) {
        if let Ok(f) = crate::filter::Filter::parse(&filter) {
            let event = serde_json::json!({"id": "e", "type": "t", "tenant": "x", "source": "", "time": "", "data": data});
            let matched = f.matches(&event);
            prop_assert_eq!(matched, f.explain(&event).0);
        }
    }
}

/// Arbitrary JSON, with keys drawn so that operators, logical keys and the event's own fields
/// turn up often.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop_oneof![
        Just("$eq"),
        Just("$neq"),
        Just("$gt"),
        Just("$gte"),
        Just("$lt"),
        Just("$lte"),
        Just("$in"),
        Just("$nin"),
        Just("$startsWith"),
        Just("$endsWith"),
        Just("$exist"),
        Just("$not"),
        Just("$or"),
        Just("$and"),
        Just("$x"),
        Just("data"),
        Just("type"),
        Just("id"),
        Just("a"),
        Just("b"),
    ]
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-c$]{0,4}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
