//! The console and the portal: statistics kept as deliveries happen, sessions (one-time portal
//! links, CSRF, expiry, tenant isolation), the pages' security headers, and the pages themselves
//! in a real Chromium (tests/browser/pages.mjs, driven by playwright-core).

use std::time::{Duration, Instant};

use herald_harness::{Receiver, Stack, Who};
use reqwest::Method;
use serde_json::{Value, json};

use crate::SOON;

/// Polls `path` (as admin, against `base`) until `done` holds; answers the last body.
async fn poll(http: &reqwest::Client, base: &str, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = http
            .get(format!("{base}{path}"))
            .bearer_auth(herald_harness::ADMIN_TOKEN)
            .send()
            .await
            .expect("gateway reachable")
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn totals(v: &Value) -> (u64, u64, u64, u64, u64) {
    let t = &v["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or(u64::MAX);
    (n("events_in"), n("attempts"), n("delivered"), n("failed"), n("dead_lettered"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_equal_the_deliveries_made_and_a_new_gateway_reads_them_back() {
    let stack = Stack::start().await;
    let ok = Receiver::start().await;
    let flaky = Receiver::start().await;
    flaky.respond_with(&[500, 500]);
    let down = Receiver::start().await;
    down.respond_with(&[503; 20]);
    let a = stack.subscribe(&ok.url("/a"), &["o.*"], Some("acme")).await;
    let body = json!({"url": flaky.url("/b"), "event_types": ["o.*"], "tenant": "acme", "retry_schedule": "1s,1s"});
    let (_, _, b) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    let body = json!({"url": down.url("/c"), "event_types": [">"], "tenant": "globex", "retry_schedule": "1s"});
    let (_, _, c) = stack.call(Method::POST, "/v1/subscriptions", Some(body)).await;
    let ids: Vec<String> = [&a, &b, &c].iter().map(|s| s["id"].as_str().unwrap().to_owned()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        stack.publish(json!({"id": format!("st-a-{i}"), "type": "o.x", "tenant": "acme", "data": {"i": i}})).await;
    }
    for i in 0..2 {
        stack.publish(json!({"id": format!("st-g-{i}"), "type": "g.x", "tenant": "globex", "data": {}})).await;
    }
    // What the receivers saw: a gets 5; b fails twice then gets all 5; c fails every attempt of
    // both events until they are dead-lettered.
    ok.wait_for(5, SOON).await;
    flaky.wait_for(7, SOON).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack.stream_messages("HERALD_DLQ").await < 2 {
        assert!(Instant::now() < deadline, "globex's events were not dead-lettered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down_requests = down.received().len() as u64;
    assert!(down_requests >= 2, "c was tried");

    {
        let (http, base) = (&stack.http, stack.gateway.clone());
        let sub = |id: &str| format!("/v1/stats?subscription={id}&interval=minute");
        let sa = poll(http, &base, &sub(&ids[0]), "a's statistics", |v| totals(v).2 == 5).await;
        assert_eq!(totals(&sa), (0, 5, 5, 0, 0), "{sa}");
        assert_eq!(sa["success_rate"], 1.0);
        let sb = poll(http, &base, &sub(&ids[1]), "b's statistics", |v| totals(v).2 == 5).await;
        assert_eq!(totals(&sb), (0, 7, 5, 2, 0), "{sb}");
        let sc = poll(http, &base, &sub(&ids[2]), "c's statistics", |v| totals(v).4 == 2).await;
        assert_eq!(totals(&sc), (0, down_requests, 0, down_requests - 2, 2), "{sc}");
        let acme = poll(http, &base, "/v1/stats?tenant=acme", "acme's statistics", |v| totals(v).2 == 10).await;
        assert_eq!(totals(&acme), (5, 12, 10, 2, 0), "{acme}");
        assert_eq!(acme["buckets"].as_array().unwrap().len(), 24, "a day of hours");
        // Overall: these events and the operator's own (`delivery.dead_lettered`, …).
        let all = poll(http, &base, "/v1/stats", "overall statistics", |v| totals(v).4 == 2).await;
        let (_, _, operator) = stack.call(Method::GET, "/v1/stats?tenant=herald", None).await;
        let operational = totals(&operator).0;
        assert!(operational >= 2, "two dead letters were announced: {operator}");
        assert_eq!(totals(&all), (7 + operational, 12 + down_requests, 10, down_requests, 2), "{all}");
        // The acme token sees its own tenant's figures.
        let (_, _, own) = stack.call_as("test-acme-token-0123456789", Method::GET, "/v1/stats", None).await;
        assert_eq!(totals(&own), totals(&acme), "{own}");
        let overview = poll(http, &base, "/v1/overview", "the overview", |v| v["dead_letters"] == 2).await;
        assert_eq!(overview["last_hour_totals"]["delivered"], 10, "{overview}");
        assert_eq!(overview["subscriptions"], 3);
        let row = |t: &str| overview["tenants"].as_array().unwrap().iter().find(|r| r["tenant"] == t).cloned().unwrap();
        assert_eq!(
            (row("acme")["subscriptions"].as_u64(), row("acme")["totals"]["delivered"].as_u64()),
            (Some(2), Some(10))
        );
        assert_eq!(row("globex")["totals"]["dead_lettered"], 2);
        assert_eq!(overview["lag"]["events_pending"], 0, "{overview}");
    }

    // A gateway started now reads the same figures back from the streams.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let config = herald_harness::gateway_config(&stack.nats.url(), &[]);
    let task = tokio::spawn(herald_gateway::run(config, listener, stop.clone().cancelled_owned()));
    let later = poll(&stack.http, &second, "/v1/stats?tenant=acme", "the new gateway's statistics", |v| {
        v["warming"] == false && totals(v).2 == 10
    })
    .await;
    assert_eq!(totals(&later), (5, 12, 10, 2, 0), "{later}");
    let later_b =
        poll(&stack.http, &second, &format!("/v1/stats?subscription={}", ids[1]), "b", |v| totals(v).2 == 5).await;
    assert_eq!(totals(&later_b), (0, 7, 5, 2, 0));
    stop.cancel();
    let _ = task.await;

    // Bad queries are told what is wrong.
    for (path, field) in [
        ("/v1/stats?interval=week", None),
        ("/v1/stats?tenant=a.b", Some("tenant")),
        ("/v1/stats?since=yesterday", Some("since")),
    ] {
        let (status, _, p) = stack.call(Method::GET, path, None).await;
        assert_eq!((status, p["field"].as_str()), (400, field), "{path}: {p}");
    }
    let (status, _, _) = stack.call(Method::GET, "/v1/stats?subscription=sub_01ARZ3NDEKTSV4RRFFQ69G5FAV", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_links_open_once_and_sessions_expire_and_need_their_csrf_token() {
    // As a ConfigMap's block scalar gives it: with a line break at the end.
    let stack = Stack::start_with(true, &["--portal-frame-ancestors", "https://app.example.com\n"]).await;

    // A link opens once.
    let code = stack
        .portal_link("acme", json!({"expires_in": "4s", "theme": {"name": "Acme", "primary_color": "#aa3300"}}))
        .await;
    let (status, cookie, session) = stack.open_portal(&code).await;
    assert_eq!(status, 200, "{session}");
    let cookie = cookie.expect("a cookie");
    for attr in ["herald_portal=", "HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(cookie.contains(attr), "{attr} missing from {cookie}");
    }
    assert_eq!((session["tenant"].as_str(), session["kind"].as_str()), (Some("acme"), Some("portal")));
    assert_eq!(session["theme"]["name"], "Acme");
    let csrf = session["csrf"].as_str().unwrap().to_owned();
    let (status, _, again) = stack.open_portal(&code).await;
    assert_eq!((status, again["type"].as_str()), (410, Some("urn:herald:problem:gone")), "{again}");
    let (status, _, _) = stack.open_portal(&"0".repeat(64)).await;
    assert_eq!(status, 404);
    // Two openings at once: one session.
    let racing = stack.portal_link("acme", json!({})).await;
    let (x, y) = tokio::join!(stack.open_portal(&racing), stack.open_portal(&racing));
    let mut statuses = [x.0, y.0];
    statuses.sort();
    assert_eq!(statuses, [200, 410]);
    // A link not opened in time is worthless.
    let late = stack.portal_link("acme", json!({"link_expires_in": "1s"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, why) = stack.open_portal(&late).await;
    assert_eq!(status, 410, "{why}");
    assert!(why["detail"].as_str().unwrap().contains("expired"), "{why}");

    // The session works with its cookie and its CSRF token, and not with one of them alone.
    let who = Who::session(&cookie, &csrf);
    let (status, _, _) = stack.call_by(&who, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 200);
    let bare = cookie.split(';').next().unwrap().to_owned();
    let send = |csrf: Option<&str>, site: Option<&str>| {
        let mut req = stack.http.post(format!("{}/v1/subscriptions", stack.gateway)).header("cookie", &bare);
        if let Some(c) = csrf {
            req = req.header("x-herald-csrf", c);
        }
        if let Some(s) = site {
            req = req.header("sec-fetch-site", s);
        }
        req.header("content-type", "application/json")
            .body(json!({"url": "http://127.0.0.1:9/x", "event_types": ["a"]}).to_string())
    };
    let forged = send(None, Some("cross-site")).send().await.unwrap();
    assert_eq!(forged.status(), 401, "a forged cross-site form post carries the cookie only");
    let wrong = send(Some("portal.0000"), None).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let cross = send(Some(&csrf), Some("cross-site")).send().await.unwrap();
    assert_eq!(cross.status(), 403);
    let (status, _, listed) = stack.call_by(&who, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!((status, listed["data"].as_array().map(Vec::len)), (200, Some(0)), "nothing was created");
    // After a reload the page asks for its session again.
    let resumed = stack
        .http
        .get(format!("{}/v1/session?kind=portal", stack.gateway))
        .header("cookie", &bare)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let resumed: Value = serde_json::from_slice(&resumed).unwrap();
    assert_eq!(resumed["csrf"], csrf.as_str());

    // It expires.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, _, gone) = stack.call_by(&who, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401, "{gone}");

    // Signing out ends a session at once.
    let other = stack.portal_session("acme").await;
    let (status, headers, _) = stack.call_by(&other, Method::DELETE, "/v1/session", None).await;
    assert_eq!(status, 204);
    assert!(headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    let (status, _, _) = stack.call_by(&other, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401);

    // Links are asked for by the operator: checked input, the tenant's own token or admin.
    for (body, field) in [
        (json!({"tenant": "acme", "expires_in": "2d"}), "expires_in"),
        (json!({"tenant": "acme", "theme": {"primary_color": "red; background: url(x)"}}), "theme"),
        (json!({"tenant": "acme", "theme": {"logo_url": "javascript:alert(1)"}}), "theme"),
        (json!({"tenant": "no.dots"}), "tenant"),
    ] {
        let (status, _, p) = stack.call(Method::POST, "/v1/portal/sessions", Some(body.clone())).await;
        assert_eq!((status, p["field"].as_str()), (400, Some(field)), "{body}: {p}");
    }
    let acme = "test-acme-token-0123456789";
    let (status, _, link) =
        stack.call_as(acme, Method::POST, "/v1/portal/sessions", Some(json!({"tenant": "acme"}))).await;
    assert_eq!(status, 201, "{link}");
    assert!(link["url"].as_str().unwrap().starts_with(&format!("{}/portal/#code=", stack.gateway)), "{link}");
    let (status, _, _) =
        stack.call_as(acme, Method::POST, "/v1/portal/sessions", Some(json!({"tenant": "globex"}))).await;
    assert_eq!(status, 403);

    // The console: an admin token signs in, nothing less; a page of another site cannot.
    let sign_in = |token: &str, site: &str| {
        stack
            .http
            .post(format!("{}/console/session", stack.gateway))
            .header("content-type", "application/json")
            .header("sec-fetch-site", site)
            .body(json!({"token": token}).to_string())
            .send()
    };
    assert_eq!(sign_in(acme, "same-origin").await.unwrap().status(), 401);
    assert_eq!(sign_in(herald_harness::ADMIN_TOKEN, "cross-site").await.unwrap().status(), 403);
    let res = sign_in(herald_harness::ADMIN_TOKEN, "same-origin").await.unwrap();
    assert_eq!(res.status(), 200);
    let console_cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(console_cookie.contains("SameSite=Strict") && console_cookie.contains("HttpOnly"), "{console_cookie}");
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    let operator = Who::session(&console_cookie, body["csrf"].as_str().unwrap());
    let (status, _, _) = stack.call_by(&operator, Method::GET, "/v1/overview", None).await;
    assert_eq!(status, 200);
    // A portal token does not open the console's session, nor the other way round.
    let (status, _, _) = stack.call_by(&Who::session(&console_cookie, &csrf), Method::GET, "/v1/overview", None).await;
    assert_eq!(status, 401);

    // The pages: a strict policy; the console is never framed, the portal only by its origins.
    let page = |path: &str| stack.http.get(format!("{}{path}", stack.gateway)).send();
    let console = page("/console/").await.unwrap();
    assert_eq!(console.status(), 200);
    let csp = console.headers()["content-security-policy"].to_str().unwrap().to_owned();
    for part in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{part} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(console.headers()["x-frame-options"], "DENY");
    let portal = page("/portal/").await.unwrap();
    let csp = portal.headers().get("content-security-policy").expect("the portal always has its policy");
    let csp = csp.to_str().unwrap().to_owned();
    assert!(csp.ends_with("frame-ancestors 'self' https://app.example.com"), "{csp}");
    assert!(portal.headers().get("x-frame-options").is_none());
    let html = portal.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");
    let js = page("/ui/portal.js").await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    assert_eq!(js.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page("/ui/secrets.txt").await.unwrap().status(), 404);
    assert_eq!(page("/console").await.unwrap().status(), 200, "redirected to /console/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_session_never_reaches_another_tenants_objects() {
    let stack = Stack::start().await;
    let who = stack.portal_session("acme").await;
    crate::security::cross_tenant_suite(&stack, &who, false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_and_the_portal_work_in_chromium() {
    let root = herald_harness::workspace_root();
    // Debian's Chromium and playwright-core from npm, installed if missing.
    let tools =
        std::process::Command::new(root.join("scripts/ensure-browser.sh")).output().expect("ensure-browser.sh runs");
    assert!(tools.status.success(), "scripts/ensure-browser.sh: {}", String::from_utf8_lossy(&tools.stderr));
    let tools = String::from_utf8(tools.stdout).unwrap();
    let mut lines = tools.lines();
    let (chromium, module) = (lines.next().unwrap().to_owned(), lines.next().unwrap().to_owned());

    let frame_port = herald_harness::free_port();
    let allowed = format!("http://127.0.0.1:{frame_port}");
    let stack = Stack::start_with(true, &["--portal-frame-ancestors", &allowed]).await;
    let screenshots = root.join("target/screenshots");
    let run = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/pages.mjs"))
        .env("HERALD_GATEWAY", &stack.gateway)
        .env("HERALD_ADMIN_TOKEN", herald_harness::ADMIN_TOKEN)
        .env("FRAME_PORT", frame_port.to_string())
        .env("PLAYWRIGHT_CORE", &module)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &screenshots)
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(240), run).await.expect("the browser run ends").expect("node runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser run failed:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a report");
    assert_eq!(report["ok"], true, "{stdout}");
    for name in [
        "console-overview",
        "console-subscription",
        "console-dead-letters",
        "console-events",
        "portal-endpoints",
        "portal-embedded",
    ] {
        let file = screenshots.join(format!("{name}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 10_000, "{} was not taken", file.display());
    }
}

/// Starts a gateway on `stack`'s NATS; answers its address and what stops it.
async fn another_gateway(stack: &Stack) -> (String, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    let config = herald_harness::gateway_config(&stack.nats.url(), &[]);
    let stopped = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        let _ = herald_gateway::run(config, listener, stopped).await;
    });
    (base, stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_that_is_over_is_sealed_once_and_read_back_from_its_seal() {
    use herald_core::proto;
    use prost::Message as _;

    let stack = Stack::start_with(false, &[]).await;
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let receiver = Receiver::start().await;
    let mut ids = Vec::new();
    for path in ["/a", "/b"] {
        ids.push(stack.subscribe(&receiver.url(path), &["o.*"], Some("acme")).await["id"].as_str().unwrap().to_owned());
    }
    let (sub_a, sub_b) = (ids[0].as_str(), ids[1].as_str());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let hour = now - now.rem_euclid(3600) - 3 * 3600;
    let entry = |minute: i64, sub: &str, delivered: u64, failed: u64| proto::StatsEntry {
        at: hour + minute * 60,
        subscription_id: sub.into(),
        tenant: "acme".into(),
        attempts: delivered + failed,
        delivered,
        failed,
        latency_ms_total: 10 * (delivered + failed),
        ..Default::default()
    };
    // Three hours ago, two dispatcher replicas counted: what their deltas hold is what the
    // statistics of that hour must say.
    let deltas = [
        proto::StatsDelta { replica: "d1".into(), entries: vec![entry(1, sub_a, 3, 1), entry(59, sub_b, 2, 0)] },
        proto::StatsDelta {
            replica: "d2".into(),
            entries: vec![
                entry(30, sub_a, 4, 0),
                proto::StatsEntry { at: hour + 60, tenant: "acme".into(), events_in: 9, ..Default::default() },
            ],
        },
    ];
    let subject = herald_core::nats::stats_minutes_subject(hour);
    for delta in &deltas {
        js.publish(subject.clone(), delta.encode_to_vec().into()).await.unwrap().await.unwrap();
    }
    let acme_hours = "/v1/stats?tenant=acme&interval=hour";
    let expected = (9, 10, 9, 1, 0);

    // The running gateway was warm before they were stored, so it follows them as they come.
    let seen = poll(&stack.http, &stack.gateway, acme_hours, "the deltas followed", |v| totals(v) == expected).await;
    let bucket =
        |v: &Value| v["buckets"].as_array().unwrap().iter().find(|b| b["attempts"].as_u64() > Some(0)).cloned();
    assert_eq!(
        bucket(&seen).unwrap()["start"],
        herald_core::rfc3339(time::OffsetDateTime::from_unix_timestamp(hour).unwrap())
    );

    // The hour is over: a gateway seals it (once, however many are running), and stores nothing
    // for hours still under way.
    let seals = |js: async_nats::jetstream::Context| async move {
        let stream = js.get_stream(herald_core::nats::STATS_STREAM).await.unwrap();
        let mut found = Vec::new();
        let mut subjects = stream.info_with_subjects("herald.stats.hours.>").await.unwrap();
        while let Some(s) = futures::StreamExt::next(&mut subjects).await {
            found.push(s.unwrap());
        }
        found
    };
    let (second, stop_second, task_second) = another_gateway(&stack).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seals(js.clone()).await.is_empty() {
        assert!(Instant::now() < deadline, "the hour was not sealed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await; // both gateways had their turn
    assert_eq!(seals(js.clone()).await, vec![(herald_core::nats::stats_hours_subject(hour, 0), 1)]);
    let from_second = poll(&stack.http, &second, acme_hours, "the second gateway", |v| v["warming"] == false).await;
    assert_eq!(totals(&from_second), expected, "{from_second}");
    stop_second.cancel();
    let _ = task_second.await;

    // A dispatcher that could not reach NATS for a while stores a delta of the hour after its
    // seal: a gateway started now reads the seal, not the sealed deltas, and adds the late one.
    let late = proto::StatsDelta { replica: "d3".into(), entries: vec![entry(58, sub_b, 0, 2)] };
    js.publish(subject.clone(), late.encode_to_vec().into()).await.unwrap().await.unwrap();
    let (third, stop_third, task_third) = another_gateway(&stack).await;
    let from_third = poll(&stack.http, &third, acme_hours, "the third gateway", |v| v["warming"] == false).await;
    assert_eq!(totals(&from_third), (9, 12, 9, 3, 0), "{from_third}");
    let b = poll(&stack.http, &third, &format!("/v1/stats?subscription={sub_b}&interval=hour"), "b", |_| true).await;
    assert_eq!(totals(&b), (0, 4, 2, 2, 0), "{b}");
    stop_third.cancel();
    let _ = task_third.await;
}

/// Signs in to the console with `token`: the session (as the page would send it), or the status.
async fn console_session(stack: &Stack, token: &str) -> Result<Who, u16> {
    let res = stack
        .http
        .post(format!("{}/console/session", stack.gateway))
        .header("content-type", "application/json")
        .header("sec-fetch-site", "same-origin")
        .body(json!({"token": token}).to_string())
        .send()
        .await
        .unwrap();
    if res.status() != 200 {
        return Err(res.status().as_u16());
    }
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    Ok(Who::session(&cookie, body["csrf"].as_str().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_links_die_with_the_token_that_made_them_and_the_operator_lists_and_ends_them() {
    let dir = herald_harness::temp_dir("herald-session-tokens");
    let file = dir.join("tokens");
    let (admin, acme) = ("file-admin-token-0123456789", "file-acme-token-0123456789");
    std::fs::write(&file, format!("admin={admin}\ntenant:acme={acme}\n")).unwrap();
    let stack = Stack::start_with(false, &["--tokens-file", file.to_str().unwrap()]).await;

    let console = console_session(&stack, admin).await.expect("signed in");
    let other_console = console_session(&stack, herald_harness::ADMIN_TOKEN).await.expect("signed in");
    let link = |token: &'static str| {
        let stack = &stack;
        async move {
            let (status, _, link) =
                stack.call_as(token, Method::POST, "/v1/portal/sessions", Some(json!({"tenant": "acme"}))).await;
            assert_eq!(status, 201, "{link}");
            link["url"].as_str().unwrap().split("#code=").nth(1).unwrap().to_owned()
        }
    };
    let (status, cookie, body) = stack.open_portal(&link(acme).await).await;
    assert_eq!(status, 200, "{body}");
    let portal = Who::session(&cookie.unwrap(), body["csrf"].as_str().unwrap());
    let unopened = link(acme).await;
    for who in [&console, &other_console, &portal] {
        let (status, _, body) = stack.call_by(who, Method::GET, "/v1/subscriptions", None).await;
        assert_eq!(status, 200, "{body}");
    }

    // The operator sees every live session, and which token is behind each (never a secret).
    let (status, _, listed) = stack.call(Method::GET, "/v1/sessions", None).await;
    assert_eq!(status, 200, "{listed}");
    let sessions = listed["data"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{listed}");
    let prefix = |token: &str| herald_gateway::session::token_hash(token)[..12].to_owned();
    let kinds: Vec<(&str, &str)> =
        sessions.iter().map(|s| (s["kind"].as_str().unwrap(), s["token_sha256_prefix"].as_str().unwrap())).collect();
    for want in [("console", prefix(admin)), ("console", prefix(herald_harness::ADMIN_TOKEN)), ("portal", prefix(acme))]
    {
        assert!(kinds.contains(&(want.0, want.1.as_str())), "{want:?} in {kinds:?}");
    }
    assert!(!listed.to_string().contains("csrf") && sessions.iter().all(|s| s["token_in_force"] == true), "{listed}");
    let (status, _, portals) = stack.call(Method::GET, "/v1/sessions?kind=portal&tenant=acme", None).await;
    assert_eq!((status, portals["data"].as_array().map(Vec::len)), (200, Some(1)), "{portals}");
    // Neither a tenant token nor a portal session may list or end sessions.
    assert_eq!(stack.call_as(acme, Method::GET, "/v1/sessions", None).await.0, 403);
    assert_eq!(stack.call_by(&portal, Method::GET, "/v1/sessions", None).await.0, 403);

    // Ending one: its next call is refused, the others live on.
    let id = sessions.iter().find(|s| s["token_sha256_prefix"] == prefix(herald_harness::ADMIN_TOKEN)).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = stack.call(Method::DELETE, &format!("/v1/sessions/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(stack.call_by(&other_console, Method::GET, "/v1/subscriptions", None).await.0, 401);
    assert_eq!(stack.call(Method::DELETE, &format!("/v1/sessions/{id}"), None).await.0, 404);
    assert_eq!(stack.call_by(&console, Method::GET, "/v1/subscriptions", None).await.0, 200);

    // The tokens file loses both tokens: once the gateway has reloaded it (the bearer token is
    // refused), their sessions and unopened links are refused too, at their very next call.
    std::fs::write(&file, "# revoked\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while stack.call_as(admin, Method::GET, "/v1/subscriptions", None).await.0 != 401 {
        assert!(tokio::time::Instant::now() < deadline, "the tokens file was not reloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, why) = stack.call_by(&console, Method::GET, "/v1/subscriptions", None).await;
    assert_eq!(status, 401, "{why}");
    assert!(why["detail"].as_str().unwrap().contains("no longer in force"), "{why}");
    assert_eq!(stack.call_by(&portal, Method::GET, "/v1/subscriptions", None).await.0, 401);
    let (status, _, why) = stack.open_portal(&unopened).await;
    assert_eq!(status, 410, "{why}");
    assert!(why["detail"].as_str().unwrap().contains("revoked"), "{why}");
    let (_, _, listed) = stack.call(Method::GET, "/v1/sessions", None).await;
    assert!(listed["data"].as_array().unwrap().iter().all(|s| s["token_in_force"] == false), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_take_json_only_and_are_rate_limited_and_the_sessions_bucket_is_bounded() {
    let stack = Stack::start_with(false, &[]).await;
    // A cross-site form can post text/plain without a preflight: refused.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        for path in ["/console/session", "/portal/session"] {
            let res = stack
                .http
                .post(format!("{}{path}", stack.gateway))
                .header("content-type", content_type)
                .body(json!({"token": herald_harness::ADMIN_TOKEN, "code": "0".repeat(64)}).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 415, "{path} with {content_type}");
        }
    }
    // Sign-ins: a burst, then 429 with Retry-After.
    let mut limited = None;
    for _ in 0..40 {
        match console_session(&stack, "not-a-token-0123456789").await {
            Err(401) => {}
            Err(429) => {
                limited = Some(());
                break;
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
    assert!(limited.is_some(), "40 sign-ins in a row were never limited");
    let res = stack
        .http
        .post(format!("{}/console/session", stack.gateway))
        .header("content-type", "application/json")
        .body(json!({"token": herald_harness::ADMIN_TOKEN}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    // Links, per token: a tenant token minting in a loop is stopped.
    let acme = "test-acme-token-0123456789";
    let mut statuses = Vec::new();
    for _ in 0..70 {
        statuses
            .push(stack.call_as(acme, Method::POST, "/v1/portal/sessions", Some(json!({"tenant": "acme"}))).await.0);
    }
    assert!(statuses.contains(&201) && statuses.contains(&429), "{statuses:?}");
    // The admin token has a bucket of its own.
    assert_eq!(stack.call(Method::POST, "/v1/portal/sessions", Some(json!({"tenant": "acme"}))).await.0, 201);

    // The bucket itself refuses growth past its bounds.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let kv = js.get_key_value(herald_gateway::session::BUCKET).await.unwrap();
    let status = kv.status().await.unwrap();
    let config = &status.info.config;
    assert_eq!(config.max_bytes, herald_gateway::session::MAX_BYTES);
    assert_eq!(config.max_message_size, herald_gateway::session::MAX_VALUE);
    assert_eq!(config.discard, async_nats::jetstream::stream::DiscardPolicy::New);
    let too_big = vec![b'x'; herald_gateway::session::MAX_VALUE as usize + 1];
    assert!(kv.put("s.too-big", too_big.into()).await.is_err(), "a value over the bound is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_session_may_call_only_the_portals_routes_and_set_only_its_fields() {
    let stack = Stack::start_with(false, &[]).await;
    let who = stack.portal_session("acme").await;
    let (status, _, _) = stack.call(Method::POST, "/v1/event-types", Some(json!({"name": "a.b"}))).await;
    assert_eq!(status, 201);
    let fields = json!({"url": "http://127.0.0.1:9/x", "event_types": ["a.b"], "description": "ERP", "enabled": true});
    let (status, _, mine) = stack.call_by(&who, Method::POST, "/v1/subscriptions", Some(fields)).await;
    assert_eq!(status, 201, "{mine}");
    let id = mine["id"].as_str().unwrap().to_owned();

    // Every operation of the OpenAPI document, called as the portal session: those of the
    // portal's allow-list get past it, every other one answers 403. Ending things comes last.
    let doc = stack.http.get(format!("{}/openapi.json", stack.gateway)).send().await.unwrap();
    let doc: Value = serde_json::from_slice(&doc.bytes().await.unwrap()).unwrap();
    let mut operations: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| ops.as_object().unwrap().keys().map(move |m| (m.to_uppercase(), path.clone())))
        .filter(|(m, _)| ["GET", "POST", "PATCH", "PUT", "DELETE"].contains(&m.as_str()))
        .collect();
    operations.sort_by_key(|(m, p)| (p == "/v1/session" && m == "DELETE", m == "DELETE", p.clone()));
    let allowed = |m: &str, p: &str| herald_gateway::auth::PORTAL_ROUTES.iter().any(|(am, ap)| *am == m && *ap == p);
    let beyond = [
        ("POST", "/v1/events"),
        ("POST", "/v1/events/batch"),
        ("POST", "/v1/subscriptions/{id}/replay"),
        ("GET", "/v1/dead-letters"),
        ("POST", "/v1/dead-letters/redrive"),
        ("POST", "/v1/portal/sessions"),
        ("POST", "/v1/event-types"),
        ("GET", "/v1/overview"),
        ("GET", "/v1/sessions"),
        ("DELETE", "/v1/sessions/{id}"),
    ];
    for (m, p) in beyond {
        assert!(!allowed(m, p), "{m} {p} is beyond the portal");
        assert!(operations.contains(&(m.to_owned(), p.to_owned())), "{m} {p} is in the document");
    }
    let (mut refused, mut let_through) = (0, 0);
    for (method, path) in &operations {
        let url = path.replace("{id}", &id).replace("{name}", "a.b");
        let body = ["POST", "PATCH", "PUT"].contains(&method.as_str()).then(|| json!({}));
        let (status, _, answer) = stack.call_by(&who, method.parse().unwrap(), &url, body).await;
        if allowed(method, path) && path == "/v1/transformations/test" {
            // On the allow-list, but only for a link that grants transformations (this one does
            // not; see destinations::the_portal_offers_only_…).
            assert_eq!(status, 403, "{method} {path}: {answer}");
            assert!(answer["detail"].as_str().unwrap().contains("grants"), "{answer}");
        } else if allowed(method, path) {
            let_through += 1;
            assert!(status != 403 && status != 401, "{method} {path} is the portal's: {status} {answer}");
        } else if ["/healthz", "/readyz", "/metrics", "/openapi.json"].contains(&path.as_str()) {
            assert_eq!(status, 200, "{method} {path} is public");
        } else if path == "/in/{id}" {
            // Public too: a provider's signature is its authentication, whoever calls it.
            assert_eq!(status, 404, "{method} {path}: no such source: {answer}");
        } else {
            refused += 1;
            assert_eq!(status, 403, "{method} {path}: {answer}");
            assert!(answer["detail"].as_str().unwrap().contains("portal session may not call"), "{answer}");
        }
    }
    assert!(refused >= beyond.len() && let_through >= 10, "{refused} refused, {let_through} let through");

    // Fields: an endpoint's url, types, description and enabled flag, nothing else.
    let who = stack.portal_session("acme").await;
    let body = json!({"url": "http://127.0.0.1:9/x", "event_types": ["a.b"]});
    let (status, _, mine) = stack.call_by(&who, Method::POST, "/v1/subscriptions", Some(body)).await;
    assert_eq!(status, 201, "{mine}");
    let id = mine["id"].as_str().unwrap().to_owned();
    for field in [
        "headers",
        "metadata",
        "rate_limit",
        "max_in_flight",
        "retry_schedule",
        "ordering",
        "filter",
        "signature_scheme",
        "secret",
        "client_certificate",
        "tenant",
    ] {
        let body = json!({"url": "http://127.0.0.1:9/y", "event_types": ["a.b"], field: null});
        let (status, _, answer) = stack.call_by(&who, Method::POST, "/v1/subscriptions", Some(body)).await;
        assert_eq!((status, answer["field"].as_str()), (403, Some(field)), "{field}: {answer}");
        let path = format!("/v1/subscriptions/{id}");
        let (status, _, answer) = stack.call_by(&who, Method::PATCH, &path, Some(json!({field: null}))).await;
        assert_eq!((status, answer["field"].as_str()), (403, Some(field)), "{field}: {answer}");
    }
    let path = format!("/v1/subscriptions/{id}/rotate-secret");
    let (status, _, answer) = stack.call_by(&who, Method::POST, &path, Some(json!({"grace": "30d"}))).await;
    assert_eq!(status, 403, "{answer}");
    let (status, _, answer) =
        stack.call_by(&who, Method::PATCH, &format!("/v1/subscriptions/{id}"), Some(json!({"enabled": false}))).await;
    assert_eq!((status, answer["enabled"].as_bool()), (200, Some(false)), "{answer}");
    // The tenant token behind such links still may do all of it.
    let acme = "test-acme-token-0123456789";
    let body = json!({"url": "http://127.0.0.1:9/z", "event_types": ["a.b"], "metadata": {"k": "v"}, "rate_limit": 5});
    assert_eq!(stack.call_as(acme, Method::POST, "/v1/subscriptions", Some(body)).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tenant_names_published_cost_statistics_one_row() {
    let stack = Stack::start().await;
    let rx = Receiver::start().await;
    stack.subscribe(&rx.url("/acme"), &["n.*"], Some("acme")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Anyone who may publish can make up tenant names: 10,000 of them, one event each, and
    // three events of a tenant that exists.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let mut acks = Vec::new();
    for i in 0..10_000 {
        let body = json!({"id": format!("n-{i}"), "data": {}}).to_string();
        acks.push(js.publish(format!("herald.events.made-up-{i}.n.x"), body.into()).await.unwrap());
        // The client lets only so many PubAcks wait: collect them as they come.
        if acks.len() == 1_000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for i in 0..3 {
        let body = json!({"id": format!("a-{i}"), "data": {}}).to_string();
        acks.push(js.publish("herald.events.acme.n.x", body.into()).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let overview = poll(&stack.http, &stack.gateway, "/v1/overview", "all 10,003 events counted", |o| {
        o["last_hour_totals"]["events_in"] == 10_003
    })
    .await;
    let rows = overview["tenants"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["tenant"] == name).unwrap_or_else(|| panic!("{name}: {rows:?}"));
    assert_eq!(row("(other)")["totals"]["events_in"], 10_000, "{rows:?}");
    assert_eq!(row("acme")["totals"]["events_in"], 3);
    assert!(rows.len() <= 3, "one row per tenant that exists, and one for the rest: {} rows", rows.len());
    let (status, _, made_up) = stack.call(Method::GET, "/v1/stats?tenant=made-up-7", None).await;
    assert_eq!(status, 200, "{made_up}");
    assert_eq!(made_up["totals"]["events_in"], 0, "no series of its own: {made_up}");
}
