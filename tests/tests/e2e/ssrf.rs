//! The SSRF guard: subscriber URLs that lead to loopback, private, link-local, metadata and
//! other forbidden addresses — in every spelling — are never reached.

use std::time::{Duration, Instant};

use herald_harness::{Receiver, Reply, Stack};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_forbidden_address_is_reached_in_any_spelling() {
    // Nothing is allowed: not even loopback, where the receiver listens.
    let mut stack = Stack::start_with(false, &["--allow-networks", ""]).await;
    stack.start_dispatcher_with(&[
        ("--allow-networks", ""),
        ("--resolve", "rebind.test=127.0.0.1,metadata.google.internal=169.254.169.254,six.test=::1"),
    ]);
    let rx = Receiver::start().await;
    let port = rx.url("").rsplit(':').next().unwrap().to_owned();
    let forms: Vec<String> = [
        "http://127.0.0.1:{P}/",
        "http://localhost:{P}/",
        "http://localhost.:{P}/",
        "http://LOCALHOST:{P}/",
        "http://rebind.test:{P}/",
        "http://six.test:{P}/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://2130706433:{P}/",
        "http://0x7f000001:{P}/",
        "http://0177.0.0.1:{P}/",
        "http://127.1:{P}/",
        "http://127.0.0.1.:{P}/",
        "http://0:{P}/",
        "http://0.0.0.0:{P}/",
        "http://[::1]:{P}/",
        "http://[::]:{P}/",
        "http://[::ffff:127.0.0.1]:{P}/",
        "http://[::ffff:7f00:1]:{P}/",
        "http://[0:0:0:0:0:ffff:127.0.0.1]:{P}/",
        "http://[::127.0.0.1]:{P}/",
        "http://[64:ff9b::7f00:1]:{P}/",
        "http://[2002:7f00:1::]:{P}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://10.0.0.1:{P}/",
        "http://172.16.0.1:{P}/",
        "http://192.168.0.1:{P}/",
        "http://100.64.0.1:{P}/",
        "http://[fc00::1]:{P}/",
        "http://[fe80::1]:{P}/",
        "http://224.0.0.1:{P}/",
        "http://255.255.255.255:{P}/",
        "http://192.0.2.1:{P}/",
        "http://198.51.100.1:{P}/",
        "http://[2001:db8::1]:{P}/",
        "http://user@127.0.0.1:{P}/",
        "http://example.com@127.0.0.1:{P}/",
        "http://127.0.0.1:{P}@example.com/",
        "ftp://127.0.0.1:{P}/",
        "file:///etc/passwd",
    ]
    .iter()
    .map(|f| f.replace("{P}", &port))
    .collect();
    assert!(forms.len() >= 30);

    let mut created = Vec::new();
    for url in &forms {
        let (status, _, body) =
            stack.call(Method::POST, "/v1/subscriptions", Some(json!({"url": url, "event_types": ["ssrf.*"]}))).await;
        match status {
            201 => created.push((url.clone(), body["id"].as_str().unwrap().to_owned())),
            400 => assert_eq!(body["field"], "url", "{url}: {body}"),
            other => panic!("{url}: unexpected {other}: {body}"),
        }
    }
    // Host names can only be judged when they are resolved, at connect time.
    for name in ["localhost", "rebind.test", "six.test", "metadata.google.internal"] {
        assert!(created.iter().any(|(u, _)| u.contains(name)), "{name} is accepted at creation, refused at connect");
    }

    stack.publish(json!({"id": "ssrf-1", "type": "ssrf.probe", "data": {}})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (stack.stream_messages("HERALD_DLQ").await as usize) < created.len() {
        assert!(Instant::now() < deadline, "not every refused delivery was dead-lettered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (url, id) in &created {
        let (_, _, attempts) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}/attempts"), None).await;
        let attempts = attempts["data"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{url}: refused once, not retried: {attempts:?}");
        assert_eq!(attempts[0]["error_class"], "refused", "{url}: {:?}", attempts[0]);
        assert!(attempts[0]["error"].as_str().unwrap().contains("SSRF"), "{url}: {:?}", attempts[0]);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.received().is_empty(), "the receiver on loopback was reached: {:?}", rx.received().len());
    eprintln!(
        "ssrf: {} URL forms, {} refused at creation, {} refused at connect, 0 reached",
        forms.len(),
        forms.len() - created.len(),
        created.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_never_followed() {
    let stack = Stack::start().await;
    let inner = Receiver::start_on("127.0.0.2").await;
    let outer = Receiver::start().await;
    let target: &'static str = Box::leak(inner.url("/private").into_boxed_str());
    outer.script((0..10).map(|_| Reply { location: Some(target), ..Reply::status(302) }));
    stack.subscribe(&outer.url("/redirecting"), &["rd.*"], None).await;
    stack.publish(json!({"id": "rd-1", "type": "rd.x", "data": {}})).await;
    outer.wait_for(2, SOON).await;
    let (_, _, attempts) = stack.call(Method::GET, "/v1/events/rd-1/attempts", None).await;
    assert_eq!(attempts["data"][0]["status"], 302, "{attempts}");
    assert!(inner.received().is_empty(), "the redirect target was reached");
}
