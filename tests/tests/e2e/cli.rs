//! `heraldctl` as a user runs it: manage subscriptions, send an event, and receive it with
//! `heraldctl listen`, which verifies the signature.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use herald_harness::{ADMIN_TOKEN, Stack, free_port, target_bin};
use serde_json::{Value, json};

use crate::SOON;

fn heraldctl(stack: &Stack, args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(target_bin("heraldctl"))
        .arg("--json")
        .args(args)
        .env("HERALD_URL", &stack.gateway)
        .env("HERALD_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run heraldctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What `child` prints, line by line, as it prints it.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// `heraldctl listen` running, its output read line by line; killed when dropped.
struct Listen {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Listen {
    /// Starts it with `args` after `listen` (and `env`), and waits for its first line.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(target_bin("heraldctl"))
            .arg("listen")
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start heraldctl listen");
        let lines = lines_of(&mut child);
        let first = lines.recv_timeout(Duration::from_secs(10)).expect("listen starts");
        assert!(first.contains("listening"), "{first}");
        Self { child, lines }
    }

    /// Stops it and returns every line it printed after the first.
    fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The process is gone, so its output ends: every line is in the channel.
        self.lines.iter().collect()
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_manages_subscriptions_sends_events_and_listens() {
    let stack = Stack::start().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/in");

    let (ok, sub, err) = heraldctl(&stack, &["subscriptions", "create", "--url", &url, "--event-type", "cli.*"]);
    assert!(ok, "{err}");
    let id = sub["id"].as_str().unwrap().to_owned();
    let secret = sub["secret"].as_str().unwrap().to_owned();

    let (ok, list, _) = heraldctl(&stack, &["subscriptions", "list"]);
    assert!(ok);
    assert_eq!(list["data"][0]["id"], id.as_str());

    let listener = Listen::start(&["--port", &port.to_string()], &[("HERALD_SECRET", &secret)]);
    let rx = &listener.lines;

    let (ok, sent, err) =
        heraldctl(&stack, &["events", "send", "--type", "cli.test", "--data", r#"{"x": 1}"#, "--id", "cli-1"]);
    assert!(ok, "{err}");
    assert_eq!(sent["id"], "cli-1");

    let line = rx.recv_timeout(Duration::from_secs(15)).expect("the webhook arrives");
    assert!(line.contains("webhook-id=cli-1") && line.contains("signature verified"), "{line}");

    // Errors are clear and exit non-zero.
    let (ok, _, err) = heraldctl(&stack, &["events", "send", "--type", "bad..type"]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("type"), "{err}");

    // A test webhook to this subscription alone.
    let (ok, test, err) = heraldctl(&stack, &["subscriptions", "test", &id]);
    assert!(ok, "{err}");
    let ping_id = test["event_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let line = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .expect("the test webhook arrives");
        if line.contains(&ping_id) {
            break line;
        }
    };
    assert!(line.contains("signature verified"), "{line}");

    // Rotation, attempts, dead letters through the CLI.
    let (ok, rotated, err) = heraldctl(&stack, &["subscriptions", "rotate-secret", &id, "--grace", "1h"]);
    assert!(ok, "{err}");
    assert!(rotated["secret"].as_str().unwrap().starts_with("whsec_"));
    let (ok, attempts, err) = heraldctl(&stack, &["subscriptions", "attempts", &id]);
    assert!(ok, "{err}");
    assert!(attempts["data"].as_array().unwrap().iter().any(|a| a["event_id"] == "cli-1"), "{attempts}");
    let (ok, attempts, _) = heraldctl(&stack, &["events", "attempts", "cli-1"]);
    assert!(ok);
    assert_eq!(attempts["data"][0]["status"], 200);
    let (ok, letters, err) =
        heraldctl(&stack, &["dead-letters", "list", "--subscription", &id, "--since", "2020-01-01T00:00:00+00:00"]);
    assert!(ok, "{err}");
    assert_eq!(letters["data"].as_array().map(Vec::len), Some(0));
    let (ok, redriven, err) = heraldctl(&stack, &["dead-letters", "redrive", "--subscription", &id]);
    assert!(ok, "{err}");
    assert_eq!(redriven["redriven"], 0);
    let (ok, replayed, err) = heraldctl(&stack, &["subscriptions", "replay", &id, "--since", "2020-01-01T00:00:00Z"]);
    assert!(ok, "{err}");
    assert!(replayed["scanned"].as_u64().unwrap() >= 1, "{replayed}");

    // Sessions: a portal session opened, listed and ended through the CLI.
    let portal = stack.portal_session("acme").await;
    let (ok, sessions, err) = heraldctl(&stack, &["sessions", "list", "--kind", "portal"]);
    assert!(ok, "{err}");
    let listed = sessions["data"].as_array().unwrap();
    assert_eq!((listed.len(), listed[0]["tenant"].as_str()), (1, Some("acme")), "{sessions}");
    let session_id = listed[0]["id"].as_str().unwrap().to_owned();
    let (ok, revoked, err) = heraldctl(&stack, &["sessions", "revoke", &session_id]);
    assert!(ok, "{err}");
    assert_eq!(revoked["revoked"], session_id.as_str());
    assert_eq!(stack.call_by(&portal, reqwest::Method::GET, "/v1/subscriptions", None).await.0, 401);
    let (ok, _, err) = heraldctl(&stack, &["sessions", "revoke", &session_id]);
    assert!(!ok && err.contains("404"), "{err}");

    // People get tables; a profile file stands in for the environment.
    let dir = std::env::temp_dir().join(format!("heraldctl-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let profiles = dir.join("profiles");
    std::fs::write(
        &profiles,
        format!("[default]\nurl = {}\ntoken = {ADMIN_TOKEN}\n\n[broken]\nurl = http://127.0.0.1:1\n", stack.gateway),
    )
    .unwrap();
    let table = Command::new(target_bin("heraldctl"))
        .args(["subscriptions", "list"])
        .env_remove("HERALD_URL")
        .env_remove("HERALD_TOKEN")
        .env("HERALD_PROFILES_FILE", &profiles)
        .output()
        .unwrap();
    assert!(table.status.success(), "{}", String::from_utf8_lossy(&table.stderr));
    let table = String::from_utf8(table.stdout).unwrap();
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("ID"), "{table}");
    assert!(lines.next().unwrap().starts_with(&id), "{table}");
    let other = Command::new(target_bin("heraldctl"))
        .args(["--profile", "broken", "subscriptions", "list"])
        .env_remove("HERALD_URL")
        .env("HERALD_PROFILES_FILE", &profiles)
        .output()
        .unwrap();
    assert!(!other.status.success(), "the broken profile's URL was used");
    let completions = Command::new(target_bin("heraldctl")).args(["completions", "bash"]).output().unwrap();
    assert!(String::from_utf8_lossy(&completions.stdout).contains("heraldctl"));
    let _ = std::fs::remove_dir_all(&dir);

    // The container health check.
    let address = stack.gateway.trim_start_matches("http://").to_owned();
    let out = Command::new(target_bin("heraldctl")).args(["health", "--address", &address]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(target_bin("heraldctl")).args(["health", "--address", "127.0.0.1:1"]).output().unwrap();
    assert!(!out.status.success());

    let (ok, _, err) = heraldctl(&stack, &["subscriptions", "delete", &id]);
    assert!(ok, "{err}");
    let (ok, _, err) = heraldctl(&stack, &["subscriptions", "get", &id]);
    assert!(!ok && err.contains("404"), "{err}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_listen_verifies_ed25519_v1a_signatures_with_a_public_key() {
    use herald_signature::SigningKey;
    herald_harness::init();
    let key = SigningKey::generate();
    let port = free_port();
    let public_key = key.public_key().to_text();
    let listener = Listen::start(&["--port", &port.to_string(), "--public-key", &public_key], &[]);

    let http = reqwest::Client::new();
    let post = |id: &'static str, signer: &SigningKey| {
        let body = br#"{"type":"asym.test"}"#.to_vec();
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = signer.sign(id, ts, &body);
        http.post(format!("http://127.0.0.1:{port}/in"))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };
    let good = post("asym-1", &key).await.unwrap();
    assert_eq!(good.status(), 200);
    let forged = post("asym-2", &SigningKey::generate()).await.unwrap();
    assert_eq!(forged.status(), 401, "a signature from another key is refused");
    let lines: Vec<String> = listener.finish().into_iter().filter(|l| l.contains("webhook-id=")).collect();
    assert!(lines.iter().any(|l| l.contains("webhook-id=asym-1") && l.contains("signature verified")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("webhook-id=asym-2") && l.contains("REJECTED")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_creates_ed25519_subscriptions_with_client_certificates_and_listens_with_the_public_key() {
    let stack = Stack::start().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/in");
    let dir = herald_harness::temp_dir("heraldctl-cert");
    let (cert, key) = herald_harness::TestCa::new("Client CA").issue_client("cli-sender");
    std::fs::write(dir.join("client.pem"), &cert).unwrap();
    std::fs::write(dir.join("client.key"), &key).unwrap();
    let (cert_path, key_path) = (dir.join("client.pem"), dir.join("client.key"));

    let (ok, sub, err) = heraldctl(
        &stack,
        &[
            "subscriptions",
            "create",
            "--url",
            &url,
            "--event-type",
            "asym.*",
            "--signature-scheme",
            "ed25519",
            "--client-cert",
            cert_path.to_str().unwrap(),
            "--client-key",
            key_path.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(sub["signature_scheme"], "ed25519", "{sub}");
    assert_eq!(sub["client_certificate"]["subject"], "CN=cli-sender", "{sub}");
    let public_key = sub["public_key"].as_str().expect("public key").to_owned();
    let id = sub["id"].as_str().unwrap().to_owned();

    let listener = Listen::start(&["--port", &port.to_string(), "--public-key", &public_key], &[]);
    let (ok, _, err) = heraldctl(&stack, &["events", "send", "--type", "asym.paid", "--id", "asym-cli-1"]);
    assert!(ok, "{err}");
    let line = listener.lines.recv_timeout(Duration::from_secs(15)).expect("the webhook arrives");
    assert!(line.contains("webhook-id=asym-cli-1") && line.contains("signature verified"), "{line}");

    let (ok, updated, err) = heraldctl(&stack, &["subscriptions", "update", &id, "--remove-client-cert"]);
    assert!(ok, "{err}");
    assert!(updated.get("client_certificate").is_none(), "{updated}");
    let (ok, rotated, err) =
        heraldctl(&stack, &["subscriptions", "rotate-secret", &id, "--signature-scheme", "hmac-sha256"]);
    assert!(ok, "{err}");
    assert!(rotated["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "{rotated}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_sets_and_tries_payload_filters() {
    let stack = Stack::gateway_only().await;
    let filter = r#"{"data": {"amount": {"$gte": 100}}}"#;
    let (ok, sub, err) = heraldctl(
        &stack,
        &["subscriptions", "create", "--url", "https://example.com/f", "--event-type", "order.*", "--filter", filter],
    );
    assert!(ok, "{err}");
    assert_eq!(sub["filter"]["data"]["amount"]["$gte"], 100, "{sub}");
    let id = sub["id"].as_str().unwrap().to_owned();
    let (ok, tried, err) =
        heraldctl(&stack, &["filter-test", "--filter", filter, "--event", r#"{"data": {"amount": 20}}"#]);
    assert!(ok, "{err}");
    assert_eq!(tried["matches"], false, "{tried}");
    let (ok, _, err) = heraldctl(&stack, &["subscriptions", "update", &id, "--filter", r#"{"data": {"$bad": 1}}"#]);
    assert!(!ok && err.contains("filter") && err.contains("$bad"), "{err}");
    let (ok, cleared, err) = heraldctl(&stack, &["subscriptions", "update", &id, "--filter", "{}"]);
    assert!(ok, "{err}");
    assert!(cleared.get("filter").is_none(), "{cleared}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_manages_the_event_type_catalog() {
    let stack = Stack::gateway_only().await;
    let dir = herald_harness::temp_dir("heraldctl-schema");
    let schema = dir.join("schema.json");
    std::fs::write(&schema, r#"{"type": "object", "required": ["sku"]}"#).unwrap();
    let schema_arg = format!("@{}", schema.display());
    let (ok, created, err) = heraldctl(
        &stack,
        &["event-types", "create", "parcel.shipped", "--description", "A parcel left", "--schema", &schema_arg],
    );
    assert!(ok, "{err}");
    assert_eq!(created["schema"]["required"][0], "sku", "{created}");
    let (ok, list, _) = heraldctl(&stack, &["event-types", "list"]);
    assert!(ok);
    assert_eq!(list["data"][0]["name"], "parcel.shipped");
    let (ok, _, err) = heraldctl(&stack, &["events", "send", "--type", "parcel.shipped", "--data", "{}"]);
    assert!(!ok && err.contains("sku"), "the schema holds: {err}");
    let (ok, updated, err) = heraldctl(&stack, &["event-types", "update", "parcel.shipped", "--schema", "null"]);
    assert!(ok, "{err}");
    assert!(updated.get("schema").is_none(), "{updated}");
    let (ok, _, err) = heraldctl(&stack, &["events", "send", "--type", "parcel.shipped", "--data", "{}"]);
    assert!(ok, "{err}");
    let (ok, _, err) = heraldctl(&stack, &["event-types", "delete", "parcel.shipped"]);
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_manages_inbound_sources_with_the_secret_from_a_file() {
    let stack = Stack::gateway_only().await;
    let dir = herald_harness::temp_dir("heraldctl-source");
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, "gh-secret-from-a-file\n").unwrap();
    let secret_arg = format!("@{}", secret_file.display());
    let (ok, created, err) = heraldctl(
        &stack,
        &[
            "sources",
            "create",
            "--provider",
            "github",
            "--secret",
            &secret_arg,
            "--tenant",
            "acme",
            "--event-type",
            "github.{type}",
        ],
    );
    assert!(ok, "{err}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["url"].as_str().unwrap().ends_with(&format!("/in/{id}")), "{created}");
    assert!(created.get("secret").is_none(), "a secret given is never printed: {created}");
    // The secret from the file (without its newline) is what the source checks.
    let body = br#"{"zen":"Keep it logically awesome."}"#;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"gh-secret-from-a-file");
    let sig: String = ring::hmac::sign(&key, body).as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let resp = stack
        .http
        .post(format!("{}/in/{id}", stack.gateway))
        .header("x-hub-signature-256", format!("sha256={sig}"))
        .header("x-github-event", "ping")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let (ok, made, err) =
        heraldctl(&stack, &["sources", "create", "--provider", "api-key", "--event-type", "ping.key"]);
    assert!(ok, "{err}");
    assert!(made["secret"].as_str().is_some_and(|s| !s.is_empty()), "a made secret is printed once: {made}");
    let (ok, list, _) = heraldctl(&stack, &["sources", "list", "--tenant", "acme"]);
    assert!(ok);
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["provider"], "github");
    let (ok, _, err) = heraldctl(&stack, &["sources", "delete", &id]);
    assert!(ok, "{err}");
    let (ok, _, err) = heraldctl(&stack, &["sources", "get", &id]);
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = heraldctl(&stack, &["sources", "create", "--provider", "paypal"]);
    assert!(!ok && err.contains("provider"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_makes_portal_links_that_open_once() {
    let stack = Stack::gateway_only().await;
    let theme = r##"{"name": "Acme Shop", "primary_color": "#6b3fa0"}"##;
    let (ok, link, err) =
        heraldctl(&stack, &["portal-link", "--tenant", "acme", "--expires-in", "30m", "--theme", theme]);
    assert!(ok, "{err}");
    assert_eq!((link["tenant"].as_str(), link["session_expires_in_seconds"].as_u64()), (Some("acme"), Some(1800)));
    let code = link["url"].as_str().unwrap().split("#code=").nth(1).expect("a code").to_owned();
    let (status, _, session) = stack.open_portal(&code).await;
    assert_eq!((status, session["theme"]["name"].as_str()), (200, Some("Acme Shop")), "{session}");
    assert_eq!(stack.open_portal(&code).await.0, 410);
    let (ok, _, err) =
        heraldctl(&stack, &["portal-link", "--tenant", "acme", "--theme", r#"{"primary_color": "red;"}"#]);
    assert!(!ok && err.contains("theme"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_sets_broker_destinations_transformations_and_endpoint_auth_from_files() {
    let stack = Stack::gateway_only().await;
    let dir = herald_harness::temp_dir("heraldctl-dest");
    let destination = dir.join("dest.json");
    std::fs::write(
        &destination,
        r#"{"type": "redis", "url": "redis://:hidden-pw@127.0.0.1:6379/1", "stream": "hooks"}"#,
    )
    .unwrap();
    let script = dir.join("shape.js");
    std::fs::write(&script, "function handler(w) { w.payload = {n: w.payload.data.n * 2}; return w; }").unwrap();
    let (ok, sub, err) = heraldctl(
        &stack,
        &[
            "subscriptions",
            "create",
            "--destination",
            &format!("@{}", destination.display()),
            "--event-type",
            "order.*",
            "--transformation",
            &format!("@{}", script.display()),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(sub["destination"]["type"], "redis", "{sub}");
    assert_eq!(sub["url"], "redis://127.0.0.1:6379/1", "the password is not shown: {sub}");
    assert!(sub["transformation"].as_str().unwrap().contains("handler"), "{sub}");
    let id = sub["id"].as_str().unwrap().to_owned();
    let (ok, tried, err) = heraldctl(
        &stack,
        &["transformation-test", "--code", &format!("@{}", script.display()), "--payload", r#"{"data": {"n": 21}}"#],
    );
    assert!(ok, "{err}");
    assert_eq!(tried["payload"]["n"], 42, "{tried}");
    let (ok, _, err) = heraldctl(&stack, &["subscriptions", "update", &id, "--transformation", "function nope() {}"]);
    assert!(!ok && err.contains("handler"), "{err}");
    let (ok, cleared, err) =
        heraldctl(&stack, &["subscriptions", "update", &id, "--transformation", "", "--url", "https://example.com/h"]);
    assert!(ok, "{err}");
    assert!(cleared.get("transformation").is_none() && cleared.get("destination").is_none(), "{cleared}");

    // Endpoint auth from a file (it holds a secret), changed without it, then removed.
    let auth = dir.join("auth.json");
    std::fs::write(
        &auth,
        r#"{"type": "oauth2_client_credentials", "token_url": "https://auth.example.com/token", "client_id": "herald", "client_secret": "hidden-secret"}"#,
    )
    .unwrap();
    let (ok, with_auth, err) =
        heraldctl(&stack, &["subscriptions", "update", &id, "--auth", &format!("@{}", auth.display())]);
    assert!(ok, "{err}");
    assert_eq!(with_auth["auth"]["client_id"], "herald", "{with_auth}");
    assert!(!with_auth.to_string().contains("hidden-secret"), "{with_auth}");
    let kept = r#"{"type": "oauth2_client_credentials", "token_url": "https://auth.example.com/token", "client_id": "herald", "scope": "hooks"}"#;
    let (ok, scoped, err) = heraldctl(&stack, &["subscriptions", "update", &id, "--auth", kept]);
    assert!(ok, "{err}");
    assert_eq!(scoped["auth"]["scope"], "hooks", "{scoped}");
    let (ok, removed, err) = heraldctl(&stack, &["subscriptions", "update", &id, "--remove-auth"]);
    assert!(ok, "{err}");
    assert!(removed.get("auth").is_none(), "{removed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heraldctl_polls_a_polling_subscription_a_page_at_a_time_and_follows_it() {
    let stack = Stack::start().await;
    let (ok, sub, err) = heraldctl(
        &stack,
        &["subscriptions", "create", "--destination", r#"{"type": "polling"}"#, "--event-type", "polled.*"],
    );
    assert!(ok, "{err}");
    let id = sub["id"].as_str().unwrap().to_owned();
    let mut published = Vec::new();
    for n in 0..3 {
        let (status, body) = stack.publish(json!({"type": "polled.one", "data": {"n": n}})).await;
        assert_eq!(status, 202, "{body}");
        published.push(body["id"].as_str().unwrap().to_owned());
    }
    // A page of two, then the rest after its cursor (once fan-out stored all three).
    let deadline = std::time::Instant::now() + SOON;
    let page = loop {
        let (ok, page, err) = heraldctl(&stack, &["poll", &id, "--limit", "2"]);
        assert!(ok, "{err}");
        if page["data"].as_array().map(Vec::len) == Some(2) {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids = |page: &Value| -> Vec<String> {
        page["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&page), published[..2]);
    let cursor = page["cursor"].as_str().unwrap();
    let (ok, rest, err) = loop {
        let (ok, rest, err) = heraldctl(&stack, &["poll", &id, "--cursor", cursor]);
        if rest["data"].as_array().map(Vec::len) == Some(1) || std::time::Instant::now() > deadline {
            break (ok, rest, err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(ok, "{err}");
    assert_eq!(ids(&rest), published[2..]);

    // --follow prints each event as a line, acknowledging the page before (the first two), and
    // goes on with what comes later.
    let mut child = Command::new(target_bin("heraldctl"))
        .args(["poll", &id, "--follow", "--interval", "100ms"])
        .env("HERALD_URL", &stack.gateway)
        .env("HERALD_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start heraldctl poll --follow");
    let lines = lines_of(&mut child);
    let (status, body) = stack.publish(json!({"type": "polled.later", "data": {"n": 3}})).await;
    assert_eq!(status, 202, "{body}");
    let mut followed = Vec::new();
    while followed.len() < 2 {
        let line = lines.recv_timeout(SOON).expect("heraldctl poll --follow prints the events");
        let event: Value = serde_json::from_str(&line).unwrap();
        followed.push(event["id"].as_str().unwrap().to_owned());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(followed, vec![published[2].clone(), body["id"].as_str().unwrap().to_owned()]);
}
