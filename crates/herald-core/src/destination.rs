//! Destinations other than an HTTP endpoint: a subscription may have its deliveries written to
//! a message broker (an AMQP 0-9-1 exchange, a NATS subject, a Redis stream) instead of POSTed.
//! This module validates what users give and renders the templates the dispatcher publishes to;
//! the dispatcher's `destinations` module talks to the brokers.

use crate::proto;
use crate::secrets::KeyRing;
use crate::ssrf::{Policy, Refused};
use crate::subscription::InvalidField;

/// Today's destination: a signed POST to `url`.
pub const WEBHOOK: &str = "webhook";
/// An AMQP 0-9-1 broker (RabbitMQ): a persistent message to an exchange, with publisher
/// confirms.
pub const AMQP: &str = "amqp";
/// A subject on a NATS server: a JetStream publish (acknowledged) when a stream captures the
/// subject, a core publish flushed to the server otherwise.
pub const NATS: &str = "nats";
/// A Redis stream: `XADD`, optionally capped (`MAXLEN ~`). The URL names one server, any node
/// of a Redis Cluster (which redirects to the stream's node), or Sentinels that name the master
/// (`redis+sentinel://`; see [`redis_target`]).
pub const REDIS: &str = "redis";

/// Not pushed to: its consumer polls (`GET /v1/subscriptions/{id}/poll`; see
/// [`crate::polling`]).
pub const POLLING: &str = "polling";

/// The types a destination may have.
pub const TYPES: &[&str] = &[WEBHOOK, AMQP, NATS, REDIS, POLLING];

/// The placeholders a routing key, subject or stream template may hold.
pub const PLACEHOLDERS: &[&str] = &["{event_type}", "{tenant}", "{subscription_id}"];

/// A destination as a user gives it (the API's `destination` object), before validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub kind: String,
    pub url: String,
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    pub subject: Option<String>,
    pub stream: Option<String>,
    pub max_len: Option<u64>,
    /// NATS only: a credentials file's contents (a user JWT and its NKey seed) or an NKey
    /// user seed.
    pub credentials: Option<String>,
}

/// A validated broker destination: what is stored (with the URL still open) and the URL
/// without its password, which people and attempt records see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub destination: proto::Destination,
    pub shown_url: String,
}

impl Checked {
    /// The destination as stored: its URL and credentials sealed for `subscription_id`.
    pub fn sealed(mut self, subscription_id: &str, keys: &KeyRing) -> proto::Destination {
        self.destination.url = keys.seal(subscription_id, &self.destination.url);
        if !self.destination.credentials.is_empty() {
            self.destination.credentials = keys.seal(subscription_id, &self.destination.credentials);
        }
        self.destination
    }
}

fn invalid(message: impl Into<String>) -> InvalidField {
    InvalidField { field: "destination", message: message.into() }
}

/// Validates a broker destination (`webhook` is the caller's: it is a plain `url`).
pub fn validate(given: &Given) -> Result<Checked, InvalidField> {
    let kind = given.kind.as_str();
    let schemes: &[&str] = match kind {
        AMQP => &["amqp", "amqps"],
        NATS => &["nats", "tls"],
        REDIS => &["redis", "rediss", "redis+sentinel", "rediss+sentinel"],
        WEBHOOK => return Err(invalid("a webhook destination is given as `url`")),
        other => {
            return Err(invalid(format!("type {other:?} is not a destination type; use one of {}", TYPES.join(", "))));
        }
    };
    if given.url.len() > 2048 {
        return Err(invalid("url: must be at most 2048 characters"));
    }
    let url = url::Url::parse(&given.url).map_err(|e| invalid(format!("url: not an absolute URL ({e})")))?;
    if !schemes.contains(&url.scheme()) {
        let sentinel = if kind == REDIS { "; redis+sentinel:// to find the master through Sentinel" } else { "" };
        return Err(invalid(format!(
            "url: a {kind} destination's URL starts with {}:// (or {}:// for TLS{sentinel})",
            schemes[0], schemes[1]
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("url: has no host"));
    }
    // Only a Sentinel URL has a query: the other Sentinels (`redis_target` checks them).
    if (url.query().is_some() && !is_sentinel(&url)) || url.fragment().is_some() {
        return Err(invalid("url: takes no query or fragment"));
    }
    let mut destination = proto::Destination { r#type: kind.to_owned(), url: url.to_string(), ..Default::default() };
    let only = |name: &str, value: &Option<String>| match value {
        Some(_) => Err(invalid(format!("{name} does not apply to a {kind} destination"))),
        None => Ok(()),
    };
    match kind {
        AMQP => {
            only("subject", &given.subject)?;
            only("stream", &given.stream)?;
            vhost(&url)?;
            let exchange = given.exchange.clone().unwrap_or_default();
            if exchange.len() > 127 || !exchange.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
                return Err(invalid(
                    "exchange: at most 127 letters, digits, '-', '_', '.' or ':' (\"\" is the default exchange)",
                ));
            }
            let routing_key = given.routing_key.clone().unwrap_or_else(|| "{event_type}".into());
            template("routing_key", &routing_key, 255)?;
            destination.exchange = exchange;
            destination.routing_key = routing_key;
        }
        NATS => {
            only("exchange", &given.exchange)?;
            only("routing_key", &given.routing_key)?;
            only("stream", &given.stream)?;
            if url.path() != "" && url.path() != "/" {
                return Err(invalid("url: a NATS URL has no path"));
            }
            let subject = given.subject.clone().ok_or_else(|| invalid("subject: a nats destination needs one"))?;
            template("subject", &subject, 255)?;
            let literal = render(&subject, "t", "t", "t");
            if literal.split('.').any(|token| token.is_empty() || token == "*" || token == ">")
                || literal.bytes().any(|b| b.is_ascii_whitespace())
            {
                return Err(invalid(format!(
                    "subject: {subject:?} is not a subject to publish to (no wildcards, empty tokens or spaces)"
                )));
            }
            destination.subject = subject;
            if let Some(credentials) = &given.credentials {
                nats_credentials(credentials)?;
                destination.credentials = credentials.clone();
            }
        }
        REDIS => {
            only("exchange", &given.exchange)?;
            only("routing_key", &given.routing_key)?;
            only("subject", &given.subject)?;
            redis_target(&url)?;
            let stream = given.stream.clone().ok_or_else(|| invalid("stream: a redis destination needs one"))?;
            template("stream", &stream, 255)?;
            destination.stream = stream;
        }
        _ => unreachable!("matched above"),
    }
    if kind != NATS && given.credentials.is_some() {
        return Err(invalid(format!(
            "credentials does not apply to a {kind} destination (its user and password go in the URL)"
        )));
    }
    if kind != REDIS && given.max_len.is_some() {
        return Err(invalid(format!("max_len does not apply to a {kind} destination")));
    }
    destination.max_len = given.max_len.unwrap_or(0);
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(None);
    }
    Ok(Checked { destination, shown_url: shown.to_string() })
}

/// How a NATS destination authenticates beyond its URL's user and password or token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsCredentials {
    /// A credentials file (`nsc`'s `.creds`): the user JWT and the NKey seed that signs for it.
    File(String),
    /// An NKey user seed (`SU…`).
    Seed(String),
}

/// Tells a NATS destination's `credentials` apart: a credentials file or a user seed. Only
/// their shape is checked here; the server judges them.
pub fn nats_credentials(text: &str) -> Result<NatsCredentials, InvalidField> {
    let text = text.trim();
    if text.len() > 16 * 1024 {
        return Err(invalid("credentials: must be at most 16 KiB"));
    }
    if text.contains("-----BEGIN NATS USER JWT-----") && text.contains("-----BEGIN USER NKEY SEED-----") {
        return Ok(NatsCredentials::File(text.to_owned()));
    }
    if text.len() == 58
        && text.starts_with("SU")
        && text.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
    {
        return Ok(NatsCredentials::Seed(text.to_owned()));
    }
    Err(invalid(
        "credentials: give a NATS credentials file (a user JWT and its NKey seed, as `nsc` writes them) or an NKey user seed (SU…)",
    ))
}

/// True if a broker URL's scheme asks for TLS (`amqps`, `tls`, `rediss`, `rediss+sentinel`).
pub fn uses_tls(url: &url::Url) -> bool {
    matches!(url.scheme(), "amqps" | "tls" | "rediss" | "rediss+sentinel")
}

fn is_sentinel(url: &url::Url) -> bool {
    url.scheme().ends_with("+sentinel")
}

/// The AMQP virtual host a URL names: its path without the leading `/`, percent-decoded; `/`
/// when the path is empty (`amqp://host` and `amqp://host/` both mean the default vhost, as
/// RabbitMQ's URI spec says of the empty path… and `amqp://host/%2f` names `/` explicitly).
pub fn vhost(url: &url::Url) -> Result<String, InvalidField> {
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    if path.is_empty() {
        return Ok("/".into());
    }
    if path.contains('/') {
        return Err(invalid("url: an AMQP URL's path is one vhost (write '/' inside it as %2f)"));
    }
    let decoded = percent_decode(path).ok_or_else(|| invalid("url: the vhost is not valid percent-encoded UTF-8"))?;
    Ok(decoded)
}

/// Where a Redis destination's URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host:port/db`: one server, or any node of a Redis Cluster (a node that does
    /// not hold the stream's slot answers `MOVED` with the one that does).
    Server { db: u32 },
    /// `redis+sentinel://host:port/master/db?sentinel=host:port&…`: Sentinels (the URL's host
    /// first, then each `sentinel`), asked for the address of the master named `master`. The
    /// URL's user and password are the master's; Sentinels are asked without them.
    Sentinel { master: String, db: u32, sentinels: Vec<String> },
}

/// The Sentinels a URL may name beside its host.
const MAX_SENTINELS: usize = 16;

/// What a Redis destination's URL names: its database, and for Sentinel the master's name and
/// every Sentinel's `host:port`.
pub fn redis_target(url: &url::Url) -> Result<RedisTarget, InvalidField> {
    let db = |n: Option<&str>| match n.unwrap_or_default() {
        "" => Ok(0),
        n => n.parse().map_err(|_| invalid(format!("url: {n:?} is not a Redis database number"))),
    };
    if !is_sentinel(url) {
        return Ok(RedisTarget::Server { db: db(Some(url.path().trim_start_matches('/')))? });
    }
    let mut path = url.path().trim_start_matches('/').split('/');
    let master = path.next().unwrap_or_default().to_owned();
    if master.is_empty()
        || master.len() > 128
        || !master.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(invalid(
            "url: a Sentinel URL's path names the master (redis+sentinel://host:26379/mymaster[/db]): letters, digits, '-', '_', '.', ':'",
        ));
    }
    let db = db(path.next())?;
    if path.next().is_some() {
        return Err(invalid("url: a Sentinel URL's path is /master or /master/db"));
    }
    let mut sentinels = vec![format!("{}:{}", url.host_str().unwrap_or_default(), port(url))];
    for (key, value) in url.query_pairs() {
        if key != "sentinel" {
            return Err(invalid(format!("url: {key:?} is not a Sentinel URL's parameter (only sentinel=host:port)")));
        }
        let parsed = url::Url::parse(&format!("redis://{value}"))
            .ok()
            .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()) && u.path().is_empty() && u.username().is_empty());
        let Some(parsed) = parsed else {
            return Err(invalid(format!("url: sentinel={value:?} is not host:port")));
        };
        sentinels.push(format!("{}:{}", parsed.host_str().unwrap_or_default(), parsed.port().unwrap_or(26379)));
    }
    if sentinels.len() > MAX_SENTINELS {
        return Err(invalid(format!("url: at most {MAX_SENTINELS} Sentinels")));
    }
    Ok(RedisTarget::Sentinel { master, db, sentinels })
}

/// The user name and password of a URL, percent-decoded.
pub fn credentials(url: &url::Url) -> (Option<String>, Option<String>) {
    let user = Some(url.username()).filter(|u| !u.is_empty()).and_then(percent_decode);
    let password = url.password().and_then(percent_decode);
    (user, password)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn template(field: &'static str, text: &str, max: usize) -> Result<(), InvalidField> {
    let bad = |m: String| InvalidField { field: "destination", message: format!("{field}: {m}") };
    if text.is_empty() || text.len() > max {
        return Err(bad(format!("must be 1 to {max} characters")));
    }
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or_else(|| bad("has an unclosed '{'".into()))?;
        let placeholder = &rest[open..open + close + 1];
        if !PLACEHOLDERS.contains(&placeholder) {
            return Err(bad(format!("{placeholder} is not a placeholder; use {}", PLACEHOLDERS.join(", "))));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') || text.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad("has a stray '}' or a control character".into()));
    }
    Ok(())
}

/// A template with its placeholders replaced.
pub fn render(template: &str, event_type: &str, tenant: &str, subscription_id: &str) -> String {
    if !template.contains('{') {
        return template.to_owned();
    }
    template
        .replace("{event_type}", event_type)
        .replace("{tenant}", tenant)
        .replace("{subscription_id}", subscription_id)
}

/// The port a broker URL names, or its scheme's default.
pub fn port(url: &url::Url) -> u16 {
    url.port().unwrap_or(match url.scheme() {
        "amqp" => 5672,
        "amqps" => 5671,
        "nats" | "tls" => 4222,
        "redis" | "rediss" => 6379,
        "redis+sentinel" | "rediss+sentinel" => 26379,
        _ => 0,
    })
}

/// Checks a broker URL's host (and a Sentinel URL's other Sentinels) against the SSRF policy
/// where it is an IP literal (names are checked on the addresses they resolve to, when
/// connecting).
pub fn check_literal_host(policy: &Policy, url: &url::Url) -> Result<(), Refused> {
    match ip_literal(url) {
        Some(ip) => policy.check_ip(ip)?,
        None if url.host().is_none() => return Err(Refused("the URL has no host".into())),
        None => {}
    }
    if let Ok(RedisTarget::Sentinel { sentinels, .. }) = redis_target(url) {
        for sentinel in sentinels.iter().skip(1) {
            if let Ok(other) = url::Url::parse(&format!("redis://{sentinel}")) {
                if let Some(ip) = ip_literal(&other) {
                    policy.check_ip(ip).map_err(|r| Refused(format!("sentinel {sentinel}: {}", r.0)))?;
                }
            }
        }
    }
    Ok(())
}

/// The host of a broker URL when it is an IP address. The URL parser leaves the host of a
/// scheme it does not know (`amqp`, `nats`, `redis`) as text, so an address is parsed here.
pub fn ip_literal(url: &url::Url) -> Option<std::net::IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain(name) => name.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(kind: &str, url: &str) -> Given {
        Given { kind: kind.into(), url: url.into(), ..Default::default() }
    }

    #[test]
    fn amqp_destinations_default_their_routing_key_and_hide_the_password() {
        let checked = validate(&Given {
            exchange: Some("orders".into()),
            ..given(AMQP, "amqp://app:s3cret@mq.example:5672/prod")
        })
        .unwrap();
        assert_eq!(checked.destination.routing_key, "{event_type}");
        assert_eq!(checked.destination.exchange, "orders");
        assert!(checked.destination.url.contains("s3cret"), "the stored URL keeps its credentials (sealed later)");
        assert_eq!(checked.shown_url, "amqp://app@mq.example:5672/prod");
        let url = url::Url::parse(&checked.destination.url).unwrap();
        assert_eq!(vhost(&url).unwrap(), "prod");
        assert_eq!(vhost(&url::Url::parse("amqp://h").unwrap()).unwrap(), "/");
        assert_eq!(vhost(&url::Url::parse("amqp://h/%2f").unwrap()).unwrap(), "/");
        assert_eq!(credentials(&url), (Some("app".into()), Some("s3cret".into())));
    }

    #[test]
    fn each_type_is_checked_for_what_it_needs_and_refuses_what_it_does_not_take() {
        let e = |g: Given| validate(&g).unwrap_err().message;
        assert!(e(given("kafka", "kafka://h")).contains("not a destination type"));
        assert!(e(given(AMQP, "http://h")).contains("amqp://"));
        assert!(e(given(AMQP, "http://h")).contains("amqps://"));
        assert!(e(given(REDIS, "nats://h")).contains("rediss://"));
        assert!(e(given(NATS, "nats://h:4222")).contains("subject"));
        assert!(e(given(REDIS, "redis://h")).contains("stream"));
        assert!(e(Given { subject: Some("a.>".into()), ..given(NATS, "nats://h") }).contains("wildcards"));
        assert!(e(Given { subject: Some("a..b".into()), ..given(NATS, "nats://h") }).contains("empty tokens"));
        assert!(e(Given { subject: Some("a.{type}".into()), ..given(NATS, "nats://h") }).contains("not a placeholder"));
        assert!(e(Given { stream: Some("s".into()), ..given(AMQP, "amqp://h") }).contains("does not apply"));
        assert!(
            e(Given { max_len: Some(5), subject: Some("s".into()), ..given(NATS, "nats://h") }).contains("max_len")
        );
        assert!(e(Given { stream: Some("s".into()), ..given(REDIS, "redis://h/x") }).contains("database"));
        assert!(e(given(AMQP, "amqp://h/a/b")).contains("vhost"));
        let ok =
            validate(&Given { subject: Some("hooks.{tenant}.{event_type}".into()), ..given(NATS, "nats://tok@h") });
        assert_eq!(ok.unwrap().destination.subject, "hooks.{tenant}.{event_type}");
        let redis =
            validate(&Given { stream: Some("events".into()), max_len: Some(1000), ..given(REDIS, "redis://:pw@h/2") })
                .unwrap();
        assert_eq!(redis.destination.max_len, 1000);
        assert_eq!(redis.shown_url, "redis://h/2");
        assert_eq!(redis_target(&url::Url::parse("redis://h/2").unwrap()).unwrap(), RedisTarget::Server { db: 2 });
    }

    #[test]
    fn sentinel_urls_name_the_master_its_database_and_every_sentinel() {
        let target = |t: &str| redis_target(&url::Url::parse(t).unwrap());
        assert_eq!(
            target("redis+sentinel://:pw@s1/mymaster").unwrap(),
            RedisTarget::Sentinel { master: "mymaster".into(), db: 0, sentinels: vec!["s1:26379".into()] }
        );
        assert_eq!(
            target("rediss+sentinel://s1:5000/cache.main/3?sentinel=s2:5001&sentinel=10.0.0.3").unwrap(),
            RedisTarget::Sentinel {
                master: "cache.main".into(),
                db: 3,
                sentinels: vec!["s1:5000".into(), "s2:5001".into(), "10.0.0.3:26379".into()]
            }
        );
        for (bad, says) in [
            ("redis+sentinel://s1", "names the master"),
            ("redis+sentinel://s1/a b", "names the master"),
            ("redis+sentinel://s1/m/x", "database"),
            ("redis+sentinel://s1/m/1/2", "/master/db"),
            ("redis+sentinel://s1/m?db=2", "only sentinel"),
            ("redis+sentinel://s1/m?sentinel=u@h:1", "host:port"),
            ("redis+sentinel://s1/m?sentinel=h/x", "host:port"),
        ] {
            let e = target(bad).unwrap_err().message;
            assert!(e.contains(says), "{bad}: {e}");
        }
        let stream = Some("s".to_owned());
        let checked =
            validate(&Given { stream: stream.clone(), ..given(REDIS, "rediss+sentinel://:pw@s1/m?sentinel=s2") });
        assert_eq!(checked.unwrap().shown_url, "rediss+sentinel://s1/m?sentinel=s2");
        assert!(uses_tls(&url::Url::parse("rediss+sentinel://s1/m").unwrap()));
        let query = validate(&Given { stream: stream.clone(), ..given(REDIS, "redis://h?sentinel=s2") });
        assert!(query.unwrap_err().message.contains("no query"));
        let wrong = validate(&Given { stream, ..given(REDIS, "amqp://h") }).unwrap_err().message;
        assert!(wrong.contains("redis+sentinel://"), "{wrong}");
        // Every Sentinel's address is held to the SSRF policy, not only the URL's host.
        let policy = Policy::default();
        let url = url::Url::parse("redis+sentinel://s1/m?sentinel=169.254.169.254:26379").unwrap();
        assert!(check_literal_host(&policy, &url).unwrap_err().0.contains("sentinel 169.254.169.254:26379"));
    }

    #[test]
    fn tls_schemes_are_taken_with_their_default_ports() {
        let url = |t: &str| url::Url::parse(t).unwrap();
        for (kind, text, default_port) in [
            (AMQP, "amqps://u:p@mq.example/%2f", 5671),
            (NATS, "tls://nats.example", 4222),
            (REDIS, "rediss://:pw@cache.example", 6379),
        ] {
            let g = Given {
                subject: (kind == NATS).then(|| "s".into()),
                stream: (kind == REDIS).then(|| "s".into()),
                ..given(kind, text)
            };
            let checked = validate(&g).unwrap_or_else(|e| panic!("{text}: {}", e.message));
            let stored = url(&checked.destination.url);
            assert!(uses_tls(&stored), "{text}");
            assert_eq!(port(&stored), default_port);
        }
        assert!(!uses_tls(&url("amqp://h")));
        assert_eq!(port(&url("amqp://h")), 5672);
    }

    #[test]
    fn nats_credentials_are_a_creds_file_or_a_user_seed_sealed_with_the_url() {
        let seed = format!("SU{}", "A".repeat(56));
        let creds = "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.e30.sig\n------END NATS USER JWT------\n\n\
                     -----BEGIN USER NKEY SEED-----\nSUAAAA\n------END USER NKEY SEED------\n";
        assert_eq!(nats_credentials(&seed).unwrap(), NatsCredentials::Seed(seed.clone()));
        assert!(matches!(nats_credentials(creds).unwrap(), NatsCredentials::File(_)));
        assert!(nats_credentials("hunter2").unwrap_err().message.contains("credentials file"));
        assert!(nats_credentials(&format!("SU{}", "a".repeat(56))).is_err(), "seeds are base32, upper case");
        let e = |g: Given| validate(&g).unwrap_err().message;
        let with = |kind: &str, url: &str| Given {
            credentials: Some(seed.clone()),
            subject: (kind == NATS).then(|| "s".into()),
            stream: (kind == REDIS).then(|| "s".into()),
            ..given(kind, url)
        };
        assert!(e(with(REDIS, "redis://h")).contains("credentials does not apply"));
        let checked = validate(&with(NATS, "tls://h")).unwrap();
        assert_eq!(checked.destination.credentials, seed);
        let keys = KeyRing::parse("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let sealed = checked.sealed("sub_1", &keys);
        assert!(!sealed.credentials.contains(&seed));
        assert_eq!(keys.open("sub_1", &sealed.credentials).unwrap(), seed);
    }

    #[test]
    fn ip_hosts_of_broker_urls_are_checked() {
        let policy = Policy::default();
        let url = |t: &str| url::Url::parse(t).unwrap();
        assert!(check_literal_host(&policy, &url("amqp://169.254.169.254")).is_err());
        assert!(check_literal_host(&policy, &url("redis://[::1]:6379")).is_err());
        assert!(check_literal_host(&policy, &url("nats://10.0.0.1:4222")).is_err());
        assert!(check_literal_host(&policy, &url("nats://broker.example:4222")).is_ok());
        assert_eq!(ip_literal(&url("amqp://127.0.0.1:5672/%2f")), Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn templates_render_their_placeholders() {
        assert_eq!(render("hooks.{tenant}.{event_type}", "order.paid", "acme", "sub_1"), "hooks.acme.order.paid");
        assert_eq!(render("fixed", "a", "b", "c"), "fixed");
        assert_eq!(render("{subscription_id}", "a", "b", "sub_9"), "sub_9");
    }

    #[test]
    fn sealed_urls_open_only_for_their_subscription() {
        let keys = KeyRing::parse("k1:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        // A password long enough that the sealed text (random bytes, base64) cannot hold it by
        // chance, as it held "pw" in one run of CI.
        let url = "redis://:a-long-broker-password@h";
        let checked = validate(&Given { stream: Some("s".into()), ..given(REDIS, url) }).unwrap();
        let sealed = checked.sealed("sub_1", &keys);
        assert!(!sealed.url.contains("a-long-broker-password"), "{}", sealed.url);
        assert_eq!(keys.open("sub_1", &sealed.url).unwrap(), url);
        assert!(keys.open("sub_2", &sealed.url).is_err());
    }
}
