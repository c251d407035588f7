//! Secrets and tenants: rotation with a grace period, encryption at rest, cross-tenant access.

use std::time::Duration;

use herald_harness::{Receiver, Stack, Who};
use reqwest::Method;
use serde_json::json;

use crate::SOON;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_sign_side_by_side_for_the_grace_period_then_only_the_new_one() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/rot"), &["rot.*"], None).await;
    let id = sub["id"].as_str().unwrap();
    let old = sub["secret"].as_str().unwrap().to_owned();

    let grace = Duration::from_secs(5);
    let (status, _, rotated) =
        stack.call(Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"), Some(json!({"grace": "5s"}))).await;
    let rotated_at = tokio::time::Instant::now();
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    // Never shown again.
    let (_, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{id}"), None).await;
    assert!(read.get("secret").is_none() && !read.to_string().contains(&new));

    // The dispatcher learns of the rotation through its KV watch: events are published until
    // one is signed by both secrets (a fixed wait raced the watch on a loaded machine). Until
    // then only the old secret signs; never the new one alone.
    let mut sent = 0;
    let first = loop {
        sent += 1;
        stack.publish(json!({"id": format!("rot-{sent}"), "type": "rot.x", "data": {}})).await;
        let delivered = rx.wait_for(sent, SOON).await.remove(sent - 1);
        if delivered.header("webhook-signature").unwrap().split(' ').count() == 2 {
            break delivered;
        }
        delivered.verify(&old).expect("before the rotation is seen, the old secret signs");
        assert!(rotated_at.elapsed() < grace / 2, "the rotation was not applied within {:?}", grace / 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    first.verify(&old).expect("the old secret still verifies");
    first.verify(&new).expect("the new secret verifies");

    tokio::time::sleep_until(rotated_at + grace + Duration::from_millis(200)).await;
    stack.publish(json!({"id": "rot-after", "type": "rot.x", "data": {}})).await;
    let second = rx.wait_for(sent + 1, SOON).await.remove(sent);
    assert_eq!(second.header("webhook-signature").unwrap().split(' ').count(), 1, "only the new one after the grace");
    second.verify(&new).expect("the new secret verifies");
    assert!(second.verify(&old).is_err(), "the old secret no longer verifies");

    let (status, _, p) = stack
        .call(Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"), Some(json!({"grace": "forever"})))
        .await;
    assert_eq!((status, p["field"].as_str()), (400, Some("grace")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_secrets_are_sealed_at_rest_and_still_sign() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    let sub = stack.subscribe(&rx.url("/sealed"), &["seal.*"], Some("acme")).await;
    let secret = sub["secret"].as_str().unwrap();
    let key_material = secret.strip_prefix("whsec_").unwrap();

    // What the bucket holds: neither the secret's text nor its key bytes.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let kv = js.get_key_value("herald-subscriptions").await.unwrap();
    let stored = kv.get(format!("acme.{}", sub["id"].as_str().unwrap())).await.unwrap().expect("stored");
    let stored_text = String::from_utf8_lossy(&stored);
    assert!(!stored_text.contains(secret) && !stored_text.contains(key_material), "the secret is stored in the clear");
    assert!(stored_text.contains("enc:v1:test:"), "sealed with the configured key");

    stack.publish(json!({"id": "seal-1", "type": "seal.x", "tenant": "acme", "data": {}})).await;
    rx.wait_for(1, SOON).await[0].verify(secret).expect("signed with the opened secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_never_reaches_another_tenants_objects() {
    let stack = Stack::start().await;
    cross_tenant_suite(&stack, &Who::Token("test-acme-token-0123456789".into()), true, false).await;
}

/// What tenant acme's caller (`who`: its token, or a portal session of acme) can do to tenant
/// globex: nothing, and it cannot even tell globex's objects exist. `may_publish`: a token may
/// publish its own tenant's events; a portal session publishes nothing.
/// `portal`: `who` is a portal session, which may call only the routes the portal needs
/// (`herald_gateway::auth::PORTAL_ROUTES`); the others answer 403 for any subscription alike.
pub(crate) async fn cross_tenant_suite(stack: &Stack, who: &Who, may_publish: bool, portal: bool) {
    let beyond_portal =
        ["/v1/subscriptions/{id}/replay", "/v1/dead-letters?subscription={id}", "/v1/dead-letters/redrive"];
    let rx = Receiver::start().await;
    rx.respond_with(&[500; 10]);
    // globex's subscription fails until dead-lettered, so it has attempts and a dead letter.
    let body = json!({"url": rx.url("/globex"), "event_types": [">"], "tenant": "globex", "retry_schedule": "1s"});
    let (_, _, theirs) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await; // the dispatcher's watch catches up
    stack.publish(json!({"id": "g-evt", "type": "x.y", "tenant": "globex", "data": {}})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stack.stream_messages("HERALD_DLQ").await == 0 {
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, mine) = stack
        .call_by(who, Method::POST, "/v1/subscriptions", Some(json!({"url": rx.url("/acme"), "event_types": [">"]})))
        .await;
    assert_eq!(
        (status, &mine["tenant"]),
        (201, &json!("acme")),
        "subscriptions default to the caller's tenant: {mine}"
    );
    let nonexistent = "sub_01ARZ3NDEKTSV4RRFFQ69G5FAV";

    // Every route on the other tenant's subscription answers exactly as for one that does not exist.
    let since = json!({"since": "2020-01-01T00:00:00Z"});
    let routes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::GET, "/v1/subscriptions/{id}".into(), None),
        (Method::PATCH, "/v1/subscriptions/{id}".into(), Some(json!({"enabled": false}))),
        (Method::DELETE, "/v1/subscriptions/{id}".into(), None),
        (Method::POST, "/v1/subscriptions/{id}/rotate-secret".into(), Some(json!({}))),
        (Method::POST, "/v1/subscriptions/{id}/test".into(), Some(json!({}))),
        (Method::POST, "/v1/subscriptions/{id}/replay".into(), Some(since.clone())),
        (Method::POST, "/v1/subscriptions/{id}/resend".into(), Some(json!({"seq": 1}))),
        (Method::GET, "/v1/subscriptions/{id}/attempts".into(), None),
        (Method::GET, "/v1/stats?subscription={id}".into(), None),
        (Method::GET, "/v1/dead-letters?subscription={id}".into(), None),
        (Method::POST, "/v1/dead-letters/redrive".into(), Some(json!({"subscription": "{id}"}))),
    ];
    for (method, path, body) in routes {
        let mut answers = Vec::new();
        for id in [theirs.as_str(), nonexistent] {
            let body = body.as_ref().map(|b| serde_json::from_str(&b.to_string().replace("{id}", id)).unwrap());
            let (status, _, answer) = stack.call_by(who, method.clone(), &path.replace("{id}", id), body).await;
            answers.push((status, answer["type"].clone()));
        }
        let expected = if portal && beyond_portal.contains(&path.as_str()) { 403 } else { 404 };
        assert_eq!(answers[0].0, expected, "{method} {path}: {answers:?}");
        assert_eq!(answers[0], answers[1], "{method} {path}: existence leaks through the answer");
    }

    // Listings and event-level reads show none of it.
    let (_, _, subs) = stack.call_by(who, Method::GET, "/v1/subscriptions", None).await;
    assert!(subs["data"].as_array().unwrap().iter().all(|s| s["tenant"] == "acme"), "{subs}");
    let (status, _, attempts) = stack.call_by(who, Method::GET, "/v1/events/g-evt/attempts", None).await;
    assert_eq!((status, attempts["data"].as_array().map(Vec::len)), (200, Some(0)));
    let (status, _, events) = stack.call_by(who, Method::GET, "/v1/events", None).await;
    assert!(status == 200 && events["data"].as_array().unwrap().iter().all(|e| e["tenant"] == "acme"), "{events}");
    let (status, _, letters) = stack.call_by(who, Method::GET, "/v1/dead-letters", None).await;
    if portal {
        assert_eq!(status, 403, "{letters}");
    } else {
        assert_eq!((status, letters["data"].as_array().map(Vec::len)), (200, Some(0)));
    }
    for path in
        ["/v1/dead-letters?tenant=globex", "/v1/events?tenant=globex", "/v1/stats?tenant=globex", "/v1/overview"]
    {
        let (status, _, answer) = stack.call_by(who, Method::GET, path, None).await;
        assert_eq!(status, 403, "{path}: {answer}");
    }
    let (status, _, stats) = stack.call_by(who, Method::GET, "/v1/stats", None).await;
    assert_eq!((status, &stats["tenant"]), (200, &json!("acme")), "{stats}");
    let (_, _, letter) = stack.call(Method::GET, "/v1/dead-letters", None).await;
    let letter_id = letter["data"][0]["id"].clone();
    let (status, _, redrive) =
        stack.call_by(who, Method::POST, "/v1/dead-letters/redrive", Some(json!({"ids": [letter_id]}))).await;
    if portal {
        assert_eq!(status, 403, "{redrive}");
    } else {
        assert_eq!(redrive["redriven"], 0, "{redrive}");
    }
    // Nor a portal of another tenant.
    let (status, _, _) =
        stack.call_by(who, Method::POST, "/v1/portal/sessions", Some(json!({"tenant": "globex"}))).await;
    assert_eq!(status, 403);
    // Publishing: its own tenant by default (tokens only), never another's.
    let (status, _, accepted) =
        stack.call_by(who, Method::POST, "/v1/events", Some(json!({"type": "a.b", "data": {}}))).await;
    assert_eq!(status, if may_publish { 202 } else { 403 }, "{accepted}");
    let (status, _, _) = stack
        .call_by(who, Method::POST, "/v1/events", Some(json!({"type": "a.b", "data": {}, "tenant": "globex"})))
        .await;
    assert_eq!(status, 403);
    // And the admin still sees globex's subscription intact.
    let (status, _, read) = stack.call(Method::GET, &format!("/v1/subscriptions/{theirs}"), None).await;
    assert_eq!((status, read["enabled"].as_bool()), (200, Some(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reloaded_from_their_file_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("herald-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tokens");
    std::fs::write(&file, "admin=first-token-0123456789\n").unwrap();
    let path = file.to_str().unwrap().to_owned();
    let stack = Stack::start_with(false, &["--tokens-file", &path]).await;
    let (status, _, _) = stack.call_as("first-token-0123456789", Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    let (status, _, _) = stack.call_as("second-token-0123456789", Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401);

    // Revoke the first, add the second (hashed): takes effect within seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a distinct modification time
    std::fs::write(&file, "admin=second-token-0123456789\n# a broken line would keep the old tokens\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, _) = stack.call_as("second-token-0123456789", Method::GET, "/v1/subscriptions", None).await;
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the new token never worked");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _, _) = stack.call_as("first-token-0123456789", Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401, "the revoked token no longer works");

    // A file that does not parse leaves the tokens in force.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&file, "root=whatever-0123456789\n").unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, _, _) = stack.call_as("second-token-0123456789", Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_tokens_never_appear_in_logs() {
    herald_harness::init();
    let nats = herald_harness::NatsServer::start();
    let dir = std::env::temp_dir().join(format!("herald-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = herald_harness::free_port();
    let gateway_url = format!("http://127.0.0.1:{port}");
    let admin = "log-test-admin-token-0123456789";
    let key = "k9:HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";
    let spawn = |bin: &str, args: Vec<String>, log: &str| {
        std::process::Command::new(herald_harness::target_bin(bin))
            .args(args)
            .env("HERALD_LOG", "debug")
            .env("HERALD_TOKENS", format!("admin={admin}"))
            .env("HERALD_SECRET_KEYS", key)
            .env("HERALD_ALLOW_NETWORKS", herald_harness::LOOPBACK)
            .stderr(std::fs::File::create(dir.join(log)).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    /// Kills its process when dropped, so a failing assertion leaves nothing running.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let gateway = Killed(spawn(
        "herald-gateway",
        vec!["--nats-url".into(), nats.url(), "--listen".into(), format!("127.0.0.1:{port}")],
        "gateway.log",
    ));
    let mut dispatcher_args = herald_harness::dispatcher_args(&nats.url());
    dispatcher_args.retain(|a| a != "--secret-keys" && a != herald_harness::SECRET_KEYS);
    let dispatcher = Killed(spawn("herald-dispatcher", dispatcher_args[1..].to_vec(), "dispatcher.log"));

    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, body: Option<serde_json::Value>| {
        let mut req = http.request(method, format!("{gateway_url}{path}")).bearer_auth(admin);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        async move {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            Ok::<_, reqwest::Error>((
                status,
                serde_json::from_slice::<serde_json::Value>(&resp.bytes().await?).unwrap_or_default(),
            ))
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while call(Method::GET, "/v1/subscriptions", None).await.map(|r| r.0).unwrap_or(0) != 200 {
        assert!(std::time::Instant::now() < deadline, "gateway did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rx = Receiver::start().await;
    rx.respond_with(&[500]);
    let (_, sub) = call(Method::POST, "/v1/subscriptions", Some(json!({"url": rx.url("/l"), "event_types": [">"]})))
        .await
        .unwrap();
    let id = sub["id"].as_str().unwrap().to_owned();
    let mut secrets = vec![sub["secret"].as_str().unwrap().to_owned()];
    let (_, rotated) =
        call(Method::POST, &format!("/v1/subscriptions/{id}/rotate-secret"), Some(json!({}))).await.unwrap();
    secrets.push(rotated["secret"].as_str().unwrap().to_owned());
    tokio::time::sleep(Duration::from_secs(1)).await; // the dispatcher's watch catches up
    call(Method::POST, "/v1/events", Some(json!({"id": "log-1", "type": "l.x", "data": {}}))).await.unwrap();
    rx.wait_for(2, Duration::from_secs(30)).await;
    // A bad token is logged about without its text.
    let _ = http.get(format!("{gateway_url}/v1/subscriptions")).bearer_auth("wrong-token-0123456789-xyz").send().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop((gateway, dispatcher));

    let logs = std::fs::read_to_string(dir.join("gateway.log")).unwrap()
        + &std::fs::read_to_string(dir.join("dispatcher.log")).unwrap();
    assert!(logs.contains("subscription secret rotated"), "the logs were captured");
    let mut needles: Vec<String> =
        vec![admin.into(), "wrong-token-0123456789-xyz".into(), key.split(':').nth(1).unwrap().into()];
    for s in &secrets {
        needles.push(s.clone());
        needles.push(s.trim_start_matches("whsec_").into());
    }
    for needle in needles {
        assert!(!logs.contains(&needle), "a secret appears in the logs ({} bytes of logs)", logs.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Peak resident memory (`VmHWM`) of process `pid`, in MiB.
fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_by_id_in_a_loop_from_a_portal_session_hold_the_gateway_to_little_memory_and_get_429s() {
    // The gateway as a process of its own, so its memory is its own.
    let nats = herald_harness::NatsServer::start();
    let port = herald_harness::free_port();
    let tokens = format!("admin={},tenant:acme=test-acme-token-0123456789", herald_harness::ADMIN_TOKEN);
    let mut gateway = std::process::Command::new(herald_harness::target_bin("herald-gateway"))
        .args(["--nats-url", &nats.url(), "--tokens", &tokens, "--secret-keys", herald_harness::SECRET_KEYS])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("HERALD_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(std::time::Instant::now() < deadline, "the gateway did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 50,000 events of 10 KB: 500 MB in the stream.
    let js = async_nats::jetstream::new(nats.client().await);
    let filler = "x".repeat(10 * 1024);
    let mut acks = Vec::new();
    for i in 0..50_000 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("big-{i}").as_str());
        let body = json!({"id": format!("big-{i}"), "data": {"filler": filler}}).to_string();
        acks.push(js.publish_with_headers("herald.events.acme.big.x", headers, body.into()).await.unwrap());
        if acks.len() == 2_000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let link: serde_json::Value = http
        .post(format!("{base}/v1/portal/sessions"))
        .bearer_auth(herald_harness::ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(json!({"tenant": "acme"}).to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap();
    let code = link["url"].as_str().unwrap().split("#code=").nth(1).unwrap().to_owned();
    let opened = http
        .post(format!("{base}/portal/session"))
        .header("content-type", "application/json")
        .body(json!({"code": code}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(opened.status(), 200);
    let cookie = opened.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let opened: serde_json::Value = serde_json::from_slice(&opened.bytes().await.unwrap()).unwrap();
    let csrf = opened["csrf"].as_str().unwrap().to_owned();

    // The last event is found, whole; a missing one reads every header and finds nothing.
    let search = |id: String| {
        let (http, base, cookie, csrf) = (http.clone(), base.clone(), cookie.clone(), csrf.clone());
        async move {
            let res = http
                .get(format!("{base}/v1/events?id={id}"))
                .header("cookie", cookie)
                .header("x-herald-csrf", csrf)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let retry_after = res.headers().get("retry-after").is_some();
            (
                status,
                retry_after,
                serde_json::from_slice::<serde_json::Value>(&res.bytes().await.unwrap()).unwrap_or_default(),
            )
        }
    };
    let (status, _, found) = search("big-49999".into()).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"][0]["data"]["filler"].as_str().map(str::len), Some(10 * 1024));
    // Six searches at once, five rounds: at most two of them run at a time, the rest get 429.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let round = futures::future::join_all((0..6).map(|_| search("no-such-event".into()))).await;
        statuses.extend(round);
    }
    let ok = statuses.iter().filter(|(s, _, _)| *s == 200).count();
    let limited = statuses.iter().filter(|(s, retry, _)| *s == 429 && *retry).count();
    assert_eq!(ok + limited, statuses.len(), "{statuses:?}");
    assert!(ok >= 5 && limited >= 10, "{ok} answered, {limited} limited");
    assert!(statuses.iter().filter(|(s, _, _)| *s == 200).all(|(_, _, b)| b["data"] == json!([])));
    let peak = peak_mib(gateway.id());
    assert!(peak < 200.0, "the gateway peaked at {peak:.0} MiB");
    let _ = gateway.kill();
    let _ = gateway.wait();
}
