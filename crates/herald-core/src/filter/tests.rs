//! Unit tests of `filter`.

use super::*;
use serde_json::json;

fn event(data: Value) -> Value {
    json!({"id": "evt_1", "type": "order.paid", "tenant": "acme", "source": "shop", "time": "2026-01-15T10:00:00Z",
        "data": data})
}

fn check(filter: Value, data: Value) -> bool {
    let f = Filter::parse(&filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
    let e = event(data);
    let fast = f.matches(&e);
    assert_eq!(fast, f.explain(&e).0, "matches and explain agree on {filter}");
    fast
}

#[test]
fn operators_one_by_one() {
    let d = json!({"amount": 150, "status": "paid", "tags": ["vip", "eu"], "email": "a@example.com",
        "customer": {"tier": "gold", "age": 41}, "score": 2.5, "flag": true, "none": null,
        "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}]});
    let cases: &[(Value, bool)] = &[
        // Plain values, nested documents, arrays.
        (json!({"data": {"status": "paid"}}), true),
        (json!({"data": {"status": "refunded"}}), false),
        (json!({"data": {"customer": {"tier": "gold"}}}), true),
        (json!({"data": {"customer": {"tier": "silver"}}}), false),
        (json!({"data": {"tags": "vip"}}), true),
        (json!({"data": {"tags": "us"}}), false),
        (json!({"data": {"tags": ["vip", "eu"]}}), true),
        (json!({"data": {"items": {"sku": "b", "qty": 3}}}), true),
        (json!({"data": {"items": {"sku": "b", "qty": 1}}}), false),
        (json!({"data": {"none": null}}), true),
        (json!({"data": {"flag": true}}), true),
        (json!({"type": "order.paid", "tenant": "acme"}), true),
        // $eq / $neq, numbers by value.
        (json!({"data": {"amount": {"$eq": 150.0}}}), true),
        (json!({"data": {"amount": {"$neq": 150}}}), false),
        (json!({"data": {"status": {"$neq": "refunded"}}}), true),
        (json!({"data": {"missing": {"$neq": "x"}}}), true),
        // Comparisons: numbers with numbers, strings with strings, nothing across types.
        (json!({"data": {"amount": {"$gt": 100}}}), true),
        (json!({"data": {"amount": {"$gt": 150}}}), false),
        (json!({"data": {"amount": {"$gte": 150, "$lt": 200}}}), true),
        (json!({"data": {"amount": {"$lte": 149.99}}}), false),
        (json!({"data": {"score": {"$lt": 3}}}), true),
        (json!({"data": {"amount": {"$gt": "100"}}}), false),
        (json!({"data": {"status": {"$gt": 1}}}), false),
        (json!({"data": {"missing": {"$lt": 1}}}), false),
        (json!({"time": {"$gte": "2026-01-01T00:00:00Z", "$lt": "2026-02-01T00:00:00Z"}}), true),
        (json!({"data": {"items": {"$gt": 0}}}), false),
        // $in / $nin: arrays, substrings, array fields.
        (json!({"data": {"status": {"$in": ["pending", "paid"]}}}), true),
        (json!({"data": {"status": {"$in": ["pending"]}}}), false),
        (json!({"data": {"tags": {"$in": ["us", "eu"]}}}), true),
        (json!({"data": {"email": {"$in": "example"}}}), true),
        (json!({"data": {"email": {"$in": "other"}}}), false),
        (json!({"data": {"amount": {"$in": [150]}}}), true),
        (json!({"data": {"status": {"$nin": ["refunded", "cancelled"]}}}), true),
        (json!({"data": {"tags": {"$nin": ["vip"]}}}), false),
        (json!({"data": {"missing": {"$nin": ["x"]}}}), true),
        (json!({"data": {"missing": {"$in": ["x"]}}}), false),
        // Strings.
        (json!({"data": {"email": {"$endsWith": "@example.com"}}}), true),
        (json!({"data": {"email": {"$startsWith": "b@"}}}), false),
        (json!({"data": {"amount": {"$startsWith": "1"}}}), false),
        (json!({"type": {"$startsWith": "order."}}), true),
        // Existence.
        (json!({"data": {"deleted_at": {"$exist": false}}}), true),
        (json!({"data": {"none": {"$exist": true}}}), true),
        (json!({"data": {"customer": {"age": {"$exist": true}}}}), true),
        // Logic.
        (json!({"$or": [{"data": {"status": "refunded"}}, {"data": {"amount": {"$gte": 100}}}]}), true),
        (json!({"$or": [{"data": {"status": "refunded"}}, {"data": {"amount": {"$gte": 1000}}}]}), false),
        (json!({"$and": [{"data": {"status": "paid"}}, {"data": {"amount": {"$gte": 100}}}]}), true),
        (json!({"$and": [{"data": {"status": "paid"}}, {"data": {"amount": {"$gte": 1000}}}]}), false),
        (json!({"$not": {"data": {"status": "paid"}}}), false),
        (json!({"data": {"status": {"$not": {"$in": ["cancelled", "refunded"]}}}}), true),
        (json!({"data": {"status": {"$not": "paid"}}}), false),
        (
            json!({"$or": [{"$not": {"data": {"flag": true}}}, {"$and": [{"type": "order.paid"}, {"data": {"tags": "eu"}}]}]}),
            true,
        ),
        (json!({"$not": {"$or": [{"data": {"tags": "vip"}}, {"data": {"tags": "us"}}]}}), false),
        (json!({"data": {"customer": {"$or": [{"tier": "silver"}, {"age": {"$gt": 40}}]}}}), true),
        // Type mismatches and missing fields never match (except negations).
        (json!({"data": {"customer": {"tier": {"name": "gold"}}}}), false),
        (json!({"data": {"status": {"code": 1}}}), false),
        (json!({"data": {"missing": {"deep": 1}}}), false),
        (json!({"nosuch": "x"}), false),
        (json!({}), true),
    ];
    for (filter, want) in cases {
        assert_eq!(check(filter.clone(), d.clone()), *want, "{filter}");
    }
}

#[test]
fn a_bad_filter_is_refused_with_the_path_of_its_bad_part() {
    for (filter, path, says) in [
        (json!([1]), "(filter)", "must be an object"),
        (json!({"$or": []}), "$or", "non-empty array"),
        (json!({"$or": [{"data": {"x": {"$gte": true}}}]}), "$or[0].data.x.$gte", "number or a string"),
        (json!({"data": {"amount": {"$between": [1, 2]}}}), "data.amount.$between", "unknown operator"),
        (json!({"data": {"amount": {"$gt": 1, "currency": "usd"}}}), "data.amount", "mixes operators"),
        (json!({"data": {"status": {"$in": 5}}}), "data.status.$in", "takes an array"),
        (json!({"data": {"status": {"$exist": "yes"}}}), "data.status.$exist", "true or false"),
        (json!({"$gte": 1}), "$gte", "not an operator here"),
        (json!({"data": {"x": {"$gt": 1, "$or": [{"a": 1}]}}}), "data.x", "mixes operators"),
        (json!({"data": {"x": {"$startsWith": 1}}}), "data.x.$startsWith", "takes a string"),
    ] {
        let err = Filter::parse(&filter).unwrap_err();
        assert_eq!(err.path, path, "{filter}: {err}");
        assert!(err.message.contains(says), "{filter}: {err}");
    }
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({"a": deep});
    }
    assert!(Filter::parse(&deep).unwrap_err().message.contains("deeper"));
    let wide: Map<String, Value> = (0..300).map(|i| (format!("f{i}"), json!(i))).collect();
    assert!(Filter::parse(&Value::Object(wide)).unwrap_err().message.contains("at most 256"));
}

#[test]
fn explain_says_what_failed() {
    let f = Filter::parse(&json!({"data": {"amount": {"$gte": 100}, "status": "paid"}})).unwrap();
    let (matched, why) = f.explain(&event(json!({"amount": 50, "status": "paid"})));
    assert!(!matched);
    assert_eq!(why, ["data.amount: is 50, which fails $gte 100"]);
    let (matched, why) = f.explain(&event(json!({"amount": 500, "status": "paid"})));
    assert!(matched);
    assert_eq!(why, ["every condition holds"]);
    let f = Filter::parse(&json!({"$or": [{"data": {"a": 1}}, {"data": {"b": 2}}]})).unwrap();
    let (_, why) = f.explain(&event(json!({"a": 2})));
    assert_eq!(
        why,
        [
            "data.a: is 2, which fails equal to 1",
            "data.b: is missing, which fails equal to 2",
            "(event): none of the 2 $or alternatives holds"
        ]
    );
}

/// Filter documents as Outpost's and Convoy's documentation give them, with the events
/// their text describes and the result it states. Convoy filters an event's payload, which
/// is Herald's `data`: its documents are written under `data`.
#[test]
fn filters_carried_over_from_outpost_and_convoy_give_the_documented_results() {
    let cases: &[(&str, Value, Value, bool)] = &[
        // Outpost, "Destination Filters" (docs/content/features/filter.mdoc).
        ("outpost exact match", json!({"data": {"status": "paid"}}), json!({"status": "paid"}), true),
        (
            "outpost implicit AND",
            json!({"data": {"status": "paid", "currency": "usd"}}),
            json!({"status": "paid", "currency": "eur"}),
            false,
        ),
        (
            "outpost nested",
            json!({"data": {"customer": {"tier": "premium"}}}),
            json!({"customer": {"tier": "premium", "id": 7}}),
            true,
        ),
        ("outpost array contains", json!({"data": {"tags": "urgent"}}), json!({"tags": ["urgent", "support"]}), true),
        ("outpost range", json!({"data": {"amount": {"$gte": 100, "$lt": 500}}}), json!({"amount": 500}), false),
        (
            "outpost $in",
            json!({"data": {"status": {"$in": ["pending", "processing"]}}}),
            json!({"status": "processing"}),
            true,
        ),
        (
            "outpost $endsWith",
            json!({"data": {"email": {"$endsWith": "@example.com"}}}),
            json!({"email": "jo@example.com"}),
            true,
        ),
        (
            "outpost $exist false",
            json!({"data": {"deleted_at": {"$exist": false}}}),
            json!({"deleted_at": "2025-01-01T00:00:00Z"}),
            false,
        ),
        (
            "outpost $or",
            json!({"$or": [{"data": {"status": "paid"}}, {"data": {"status": "shipped"}}]}),
            json!({"status": "shipped"}),
            true,
        ),
        (
            "outpost $and",
            json!({"$and": [{"data": {"status": "active"}}, {"data": {"amount": {"$gte": 100}}}]}),
            json!({"status": "active", "amount": 99}),
            false,
        ),
        (
            "outpost $not $in",
            json!({"data": {"status": {"$not": {"$in": ["cancelled", "refunded"]}}}}),
            json!({"status": "refunded"}),
            false,
        ),
        ("outpost high-value orders", json!({"data": {"amount": {"$gte": 1000}}}), json!({"amount": 2500}), true),
        (
            "outpost time range",
            json!({"time": {"$gte": "2025-01-01T00:00:00Z", "$lt": "2025-02-01T00:00:00Z"}}),
            json!({}),
            false,
        ),
        // Convoy, "Filters" (product manual), payload filters under `data`.
        ("convoy simple match", json!({"data": {"event_type": "created"}}), json!({"event_type": "created"}), true),
        (
            "convoy nested match",
            json!({"data": {"event": {"type": "created"}}}),
            json!({"event": {"type": "updated"}}),
            false,
        ),
        (
            "convoy array contains",
            json!({"data": {"dish": {"ingredients": "rice"}}}),
            json!({"dish": {"ingredients": ["beans", "rice"]}}),
            true,
        ),
        ("convoy $neq", json!({"data": {"event": {"$neq": "created"}}}), json!({"event": "created"}), false),
        (
            "convoy $or",
            json!({"data": {"$or": [{"cities": "london"}, {"cities": "lagos"}]}}),
            json!({"cities": ["lagos", "paris"]}),
            true,
        ),
    ];
    for (name, filter, data, want) in cases {
        assert_eq!(check(filter.clone(), data.clone()), *want, "{name}: {filter} on {data}");
    }
    assert!(cases.len() >= 10);
}
