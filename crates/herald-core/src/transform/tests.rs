//! The transformation engine's tests: what a handler is given and answers, the unchanged
//! path, runaway scripts, and where calls run.

use super::*;

fn json(out: &Transformed) -> serde_json::Value {
    serde_json::from_str(out.payload.get()).unwrap()
}

fn changed(outcome: Outcome) -> Transformed {
    match outcome {
        Outcome::Changed(t) => t,
        Outcome::Unchanged => panic!("the handler changed the webhook, but the call says unchanged"),
    }
}

#[test]
fn a_webhook_returned_as_it_came_is_unchanged_and_anything_read_or_changed_is_not() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let body = r#"{ "b": 1,  "a": [1, 2] }"#;
    let raw = RawValue::from_string(body.to_owned()).unwrap();
    let headers = BTreeMap::from([("x-own".to_owned(), "1".to_owned())]);
    let webhook = Webhook {
        method: "POST",
        url: "https://a.example/",
        payload: &raw,
        event_type: "order.paid",
        headers: &headers,
    };
    let outcome = |source: &str| {
        let t = Arc::new(Transformation::compile(source).unwrap());
        runtime.block_on(t.run_async(&webhook)).unwrap()
    };
    for unchanged in [
        "function handler(w) { return w; }",
        "function handler(w) { }",
        "function handler(w) { if (w.eventType === 'x') { w.cancel = true; } return w; }",
        "function handler(w) { w.method = 'POST'; w.note = 1; return w; }",
    ] {
        assert!(matches!(outcome(unchanged), Outcome::Unchanged), "{unchanged}");
    }
    // `run` answers what would be sent all the same.
    let t = Transformation::compile("function handler(w) { return w; }").unwrap();
    let out = t.run(&webhook).unwrap();
    assert_eq!(
        (out.method.as_str(), out.url.as_str(), out.payload.get(), &out.headers, out.cancel),
        ("POST", "https://a.example/", body, &headers, false)
    );
    let changes = [
        ("function handler(w) { w.method = 'PUT'; return w; }", "PUT", "https://a.example/", "1", false),
        ("function handler(w) { w.url = 'https://b.example/'; }", "POST", "https://b.example/", "1", false),
        ("function handler(w) { w.headers['x-own'] = '2'; }", "POST", "https://a.example/", "2", false),
        ("function handler(w) { w.headers = {'x-own': '3'}; }", "POST", "https://a.example/", "3", false),
        ("function handler(w) { w.cancel = w.eventType === 'order.paid'; }", "POST", "https://a.example/", "1", true),
        ("function handler(w) { w.cancel = false; }", "POST", "https://a.example/", "1", false),
        // What the handler sees of the webhook, and nothing more.
        (
            "function handler(w) { w.headers = {'x-own': Object.keys(w).join() + ' ' + Reflect.ownKeys(w).length}; }",
            "POST",
            "https://a.example/",
            "method,url,payload,eventType,headers 6",
            false,
        ),
        (
            "function handler(w) { Object.defineProperty(w, 'headers', {value: {'x-own': '4'}, enumerable: true}); }",
            "POST",
            "https://a.example/",
            "4",
            false,
        ),
    ];
    for (source, method, url, header, cancel) in changes {
        let out = changed(outcome(source));
        assert_eq!(
            (out.method.as_str(), out.url.as_str(), out.headers["x-own"].as_str(), out.cancel, out.payload.get()),
            (method, url, header, cancel, body),
            "{source}"
        );
    }
    // The payload read, replaced or the webhook rebuilt: what the handler made of it.
    for (source, payload) in [
        ("function handler(w) { w.payload.c = 3; }", serde_json::json!({"b": 1, "a": [1, 2], "c": 3})),
        ("function handler(w) { const seen = w.payload.b; return w; }", serde_json::json!({"b": 1, "a": [1, 2]})),
        ("function handler(w) { w.payload = [5]; }", serde_json::json!([5])),
        ("function handler(w) { return {...w}; }", serde_json::json!({"b": 1, "a": [1, 2]})),
    ] {
        assert_eq!(json(&changed(outcome(source))), payload, "{source}");
    }
}

#[test]
fn an_unchanged_payload_is_sent_as_it_came() {
    let body =
        r#"{"id":"evt_1","type":"order.paid","timestamp":"2026-01-01T00:00:00Z","tenant":"t","data":{"b":1,"a":2}}"#;
    let out = run("function handler(w) { return w; }", body).unwrap();
    assert_eq!(out.payload.get(), body, "keys keep their order");
    // Not read: sent as it came, spacing and all, whatever else changed.
    let spaced = r#"{ "b": 1,  "a": [1, 2] }"#;
    let out = run("function handler(w) { w.url = 'https://x.example/'; w.headers = {'x-a': 'b'}; }", spaced).unwrap();
    assert_eq!((out.payload.get(), out.url.as_str(), out.headers["x-a"].as_str()), (spaced, "https://x.example/", "b"));
    // Read, or replaced, or the webhook rebuilt: what the handler made of it.
    let read = run("function handler(w) { w.payload.c = w.payload.b + 1; return w; }", spaced).unwrap();
    assert_eq!(json(&read), serde_json::json!({"b": 1, "a": [1, 2], "c": 2}));
    let replaced = run("function handler(w) { w.payload = {x: 1}; }", spaced).unwrap();
    assert_eq!(json(&replaced), serde_json::json!({"x": 1}));
    let rebuilt = run("function handler(w) { return {...w, url: 'https://y.example/'}; }", spaced).unwrap();
    assert_eq!(
        (json(&rebuilt), rebuilt.url.as_str()),
        (serde_json::json!({"b": 1, "a": [1, 2]}), "https://y.example/")
    );
    let logged = run("function handler(w) { JSON.stringify(w); return w; }", spaced).unwrap();
    assert_eq!(json(&logged), serde_json::json!({"b": 1, "a": [1, 2]}));
    // Taken away, or given another property in its place: missing, or what was put there.
    assert_eq!(
        run("function handler(w) { delete w.payload; return w; }", spaced).unwrap_err(),
        Failure::Invalid("`payload` is missing".into())
    );
    let redefined =
        run("function handler(w) { Object.defineProperty(w, 'payload', {value: [3], enumerable: true}); }", spaced)
            .unwrap();
    assert_eq!(json(&redefined), serde_json::json!([3]));
}

fn run(source: &str, payload: &str) -> Result<Transformed, Failure> {
    let raw = serde_json::value::RawValue::from_string(payload.to_owned()).unwrap();
    let headers = BTreeMap::new();
    let webhook = Webhook {
        method: "POST",
        url: "https://example.com/hook",
        payload: &raw,
        event_type: "order.paid",
        headers: &headers,
    };
    Transformation::compile(source)?.run(&webhook)
}

#[test]
fn svix_examples_run_unchanged() {
    // Svix's documented example: send to a URL the payload names, if it names one.
    let redirect = r#"function handler(webhook) {
  if (webhook.payload.customUrl) {
webhook.url = webhook.payload.customUrl;
  }
  return webhook;
}"#;
    let out = run(redirect, r#"{"customUrl": "https://other.example/in", "x": 1}"#).unwrap();
    assert_eq!(out.url, "https://other.example/in");
    assert_eq!(json(&out)["x"], 1);
    let out = run(redirect, r#"{"x": 1}"#).unwrap();
    assert_eq!(out.url, "https://example.com/hook");

    let reshape = r#"function handler(webhook) {
  webhook.method = "PUT";
  webhook.payload = { text: `${webhook.eventType}: ${webhook.payload.data.total}` };
  webhook.headers = { "x-shape": "slack" };
  return webhook;
}"#;
    let out = run(reshape, r#"{"data": {"total": 42}}"#).unwrap();
    assert_eq!(out.method, "PUT");
    assert_eq!(json(&out), serde_json::json!({"text": "order.paid: 42"}));
    assert_eq!(out.headers["x-shape"], "slack");

    let cancel = "function handler(webhook) { webhook.cancel = webhook.payload.test === true; return webhook; }";
    assert!(run(cancel, r#"{"test": true}"#).unwrap().cancel);
    assert!(!run(cancel, r#"{"test": false}"#).unwrap().cancel);
}

#[test]
fn runaway_scripts_fail_their_call_with_a_class_and_the_engine_recovers() {
    assert_eq!(run("function handler(w) { for (;;) {} }", "{}").unwrap_err(), Failure::TimedOut);
    assert_eq!(
        run("function handler(w) { const a = []; for (;;) { a.push(new Array(1000000).fill(1)); } }", "{}")
            .unwrap_err(),
        Failure::OutOfMemory
    );
    assert_eq!(run("function handler(w) { return handler(w); }", "{}").unwrap_err(), Failure::OutOfMemory);
    let threw = run("function handler(w) { throw new Error('no thanks'); }", "{}").unwrap_err();
    assert!(matches!(&threw, Failure::Threw(m) if m.contains("no thanks")), "{threw:?}");
    assert!(matches!(run("function handler(w) {", "{}"), Err(Failure::Syntax(_))));
    assert!(matches!(run("var x = 1;", "{}"), Err(Failure::Syntax(m)) if m.contains("handler")));
    assert!(matches!(run("function handler(w) { return 5; }", "{}"), Err(Failure::Invalid(_))));
    assert!(
        matches!(run("function handler(w) { w.method = 'GET'; return w; }", "{}"), Err(Failure::Invalid(m)) if m.contains("POST"))
    );

    // A transformation keeps working after one of its calls timed out.
    let t = Transformation::compile("function handler(w) { if (w.payload.spin) { for (;;) {} } return w; }").unwrap();
    let headers = BTreeMap::new();
    let call = |payload: &str| {
        let raw = serde_json::value::RawValue::from_string(payload.to_owned()).unwrap();
        t.run(&Webhook { method: "POST", url: "u", payload: &raw, event_type: "t", headers: &headers })
    };
    assert_eq!(call(r#"{"spin": true}"#).unwrap_err(), Failure::TimedOut);
    assert!(call(r#"{"spin": false}"#).is_ok());
}

#[test]
fn quick_calls_run_where_they_are_asked_and_slow_ones_move_their_transformation_to_the_threads() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let t = Arc::new(
        Transformation::compile(
            "function handler(w) {
               if (w.payload.spin) { for (;;) {} }
               let x = 0;
               for (let i = 0; i < w.payload.work; i++) { x += i; }
               w.payload.seen = x >= 0;
               return w;
             }",
        )
        .unwrap(),
    );
    let headers = BTreeMap::new();
    let call = |payload: &str| {
        let raw = serde_json::value::RawValue::from_string(payload.to_owned()).unwrap();
        let started = Instant::now();
        let result = runtime.block_on(t.run_async(&Webhook {
            method: "POST",
            url: "u",
            payload: &raw,
            event_type: "t",
            headers: &headers,
        }));
        (result.map(changed), started.elapsed())
    };
    // A slow call is one well past the budget and well within the limit on this build (a debug
    // build's engine is ten times slower than a release build's) and this machine's load now:
    // about 20 ms, from the time a known amount of work takes (run where no budget applies), at
    // best of three.
    let sample = 2_000u64;
    let per_unit = (0..3)
        .map(|_| {
            let raw = serde_json::value::RawValue::from_string(format!(r#"{{"work": {sample}}}"#)).unwrap();
            let started = Instant::now();
            t.run(&Webhook { method: "POST", url: "u", payload: &raw, event_type: "t", headers: &headers }).unwrap();
            started.elapsed()
        })
        .min()
        .unwrap()
        / sample as u32;
    let work = (Duration::from_millis(20).as_nanos() / per_unit.as_nanos().max(1)).max(sample as u128);
    let (quick, slow) = (r#"{"work": 1}"#, &*format!(r#"{{"work": {work}}}"#));
    for _ in 0..20 {
        assert_eq!(json(&call(quick).0.unwrap())["seen"], true);
        assert!(!t.is_slow(), "a quick script stays on the calling thread");
    }
    // A runaway call is stopped at the budget, made again on a transformation thread with
    // the whole time limit, and fails with its class there.
    let (out, took) = call(r#"{"spin": true}"#);
    assert_eq!(out.unwrap_err(), Failure::TimedOut);
    assert!(took >= INLINE_BUDGET + TIME_LIMIT, "{took:?}: the whole limit, after the budget");
    assert!(call(quick).0.is_ok());
    // A call past the budget is stopped and made again on a transformation thread, where it
    // completes. A quick call between two slow ones starts the count again; so many in a
    // row move the transformation for good.
    for _ in 1..INLINE_STRIKES {
        assert_eq!(json(&call(slow).0.unwrap())["seen"], true);
    }
    assert!(call(quick).0.is_ok());
    for in_a_row in 1..INLINE_STRIKES {
        assert_eq!(json(&call(slow).0.unwrap())["seen"], true);
        assert!(!t.is_slow(), "{in_a_row} in a row");
    }
    assert_eq!(json(&call(slow).0.unwrap())["seen"], true);
    assert!(t.is_slow(), "{INLINE_STRIKES} in a row");
    // Later calls run on the transformation threads, and still work.
    assert_eq!(json(&call(quick).0.unwrap())["seen"], true);
}

#[test]
fn a_calls_start_reads_the_cpu_clock_at_most_once_per_half_millisecond_and_is_never_above_it() {
    let started = Instant::now();
    let (mut readings, mut last, mut iterations) = (0u32, None, 0u32);
    while started.elapsed() < Duration::from_millis(5) || iterations < 1_000 {
        let recent = thread_cpu_recent();
        let now = thread_cpu_nanos();
        assert!(recent <= now, "a reading from before is not above the clock now");
        // Below it by the CPU time used since the reading, which is at most the time passed;
        // the slack is for the two statements between the reading and now.
        let slack = Duration::from_micros(200).as_nanos() as u64;
        assert!(now - recent <= CPU_READING_KEPT.as_nanos() as u64 + slack, "{} ns below", now - recent);
        if last != Some(recent) {
            readings += 1;
            last = Some(recent);
        }
        iterations += 1;
        std::hint::black_box((0..200u64).sum::<u64>());
    }
    let windows = (started.elapsed().as_nanos() / CPU_READING_KEPT.as_nanos()) as u32 + 1;
    assert!(readings > 1, "read again once it is older than kept");
    assert!(readings <= windows, "{readings} readings in {windows} windows of {CPU_READING_KEPT:?}");
    assert!(readings < iterations, "{readings} readings for {iterations} calls");
}
