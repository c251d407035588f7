//! What an attempt needs from its subscription that only changes with the subscription: the
//! parsed and SSRF-checked URL, the opened signing secrets, the retry schedule and, for a
//! subscription with a client certificate, an HTTP client of its own. Worked out once per
//! revision rather than on every attempt (URL parsing and opening a sealed secret are a few
//! percent of an attempt's CPU; a TLS client takes milliseconds to build). The registry replaces a subscription's `Arc` whenever the
//! subscription changes, so a revision is recognised by its `Arc`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use time::OffsetDateTime;

use herald_core::proto;
use herald_core::retry::RetryPolicy;
use herald_core::secrets::KeyRing;
use herald_core::ssrf::{Policy, Refused};
use herald_core::subscription::{OpenedSecret, open_secrets};
use herald_core::transform::Transformation;

use crate::destinations::{Brokers, Destination};
use crate::endpoint_auth::EndpointAuth;
use crate::http_client::{ClientSettings, WebhookClient};

/// One revision of a subscription, prepared for attempts.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The URL to POST to, or why it may not be (the resolver checks host names' addresses at
    /// connect time; an IP literal is checked here).
    pub url: Result<url::Url, Refused>,
    secrets: Vec<OpenedSecret>,
    /// The subscription's own retry schedule, if it has a valid one.
    pub retry_schedule: Option<RetryPolicy>,
    /// A client presenting the subscription's certificate (`Ok(None)`: it has none, the shared
    /// client serves it), or why its certificate cannot be used.
    pub client: Result<Option<WebhookClient>, String>,
    /// A broker destination (`None`: a webhook), or why it cannot be used.
    pub destination: Option<Result<Arc<Destination>, String>>,
    /// The subscription's transformation, compiled, or why it does not compile.
    pub transformation: Option<Result<Arc<Transformation>, String>>,
    /// How webhooks authenticate to the endpoint besides the signature (`None`: they do not),
    /// or why the subscription's auth cannot be used.
    pub auth: Option<Result<EndpointAuth, String>>,
}

impl Prepared {
    fn new(sub: &proto::Subscription, with: &PrepareWith, own_clients: &OwnClients) -> Self {
        let url = url::Url::parse(&sub.url)
            .map_err(|e| Refused(format!("the URL does not parse: {e}")))
            .and_then(|url| with.policy.check_url(&url).map(|()| url));
        let retry_schedule =
            if sub.retry_schedule.is_empty() { None } else { RetryPolicy::parse(&sub.retry_schedule).ok() };
        let client = own_clients.for_subscription(sub, with);
        if let Err(why) = &client {
            tracing::warn!(subscription = %sub.id, "{why}");
        }
        let destination = sub.destination.as_ref().filter(|_| !herald_core::polling::is_polling(sub)).map(|_| {
            let prepared = with.brokers.prepare(sub, &with.keys);
            if let Err(why) = &prepared {
                tracing::warn!(subscription = %sub.id, "{why}");
            }
            prepared
        });
        let transformation = (!sub.transformation.is_empty())
            .then(|| Transformation::compile(&sub.transformation).map(Arc::new).map_err(|e| e.to_string()));
        let auth = EndpointAuth::prepare(sub, &with.keys);
        if let Some(Err(why)) = &auth {
            tracing::warn!(subscription = %sub.id, "{why}");
        }
        Self { url, secrets: open_secrets(sub, &with.keys), retry_schedule, client, destination, transformation, auth }
    }

    /// What signs a webhook sent at `now` (rotated-out keys until their grace ends).
    pub fn signers(&self, now: OffsetDateTime) -> Vec<&herald_signature::Signer> {
        self.secrets.iter().filter(|s| s.signs_at(now)).map(|s| &s.secret).collect()
    }
}

/// The clients of subscriptions with a client certificate, by subscription: a new revision that
/// leaves the certificate as it was (a health update, a changed description) keeps the client
/// and so its open connections; a changed certificate gets a new one.
#[derive(Default)]
struct OwnClients {
    by_subscription: Mutex<HashMap<String, (proto::ClientCertificate, WebhookClient)>>,
}

impl OwnClients {
    fn for_subscription(&self, sub: &proto::Subscription, with: &PrepareWith) -> Result<Option<WebhookClient>, String> {
        let Some(stored) = &sub.client_certificate else {
            self.by_subscription.lock().expect("clients lock").remove(&sub.id);
            return Ok(None);
        };
        if let Some((certificate, client)) = self.by_subscription.lock().expect("clients lock").get(&sub.id)
            && certificate == stored
        {
            return Ok(Some(client.clone()));
        }
        let pem = match herald_core::client_cert::open(sub, &with.keys) {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("the subscription's client certificate key does not open: {e}")),
            Some(Ok(pem)) => pem,
        };
        let client = with
            .clients
            .webhooks(Some(&pem))
            .map_err(|e| format!("the subscription's client certificate cannot be used: {e:#}"))?;
        self.by_subscription.lock().expect("clients lock").insert(sub.id.clone(), (stored.clone(), client.clone()));
        Ok(Some(client))
    }

    /// Forgets the clients of subscriptions not in `keep`.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.by_subscription.lock().expect("clients lock").retain(|id, _| keep(id));
    }
}

/// What preparing needs: the keys that open sealed secrets, the SSRF policy, and how to build
/// a subscription's own client.
pub(crate) struct PrepareWith {
    pub keys: Arc<KeyRing>,
    pub policy: Arc<Policy>,
    pub clients: ClientSettings,
    pub brokers: Brokers,
}

/// Prepared revisions by subscription id. An entry whose revision is no longer held by anyone
/// (the subscription changed or was deleted) is replaced on next use or swept as the map grows.
pub(crate) struct PreparedSubscriptions {
    with: PrepareWith,
    own_clients: OwnClients,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, (Weak<proto::Subscription>, Arc<Prepared>)>,
    /// Sweep dead entries once the map grows past this.
    sweep_at: usize,
}

/// The map is swept of dead entries no more often than this many insertions apart.
const MIN_SWEEP: usize = 1024;

impl PreparedSubscriptions {
    pub(crate) fn new(with: PrepareWith) -> Self {
        Self { with, own_clients: OwnClients::default(), entries: Mutex::default() }
    }

    /// The SSRF policy subscriptions are prepared with.
    pub(crate) fn policy(&self) -> &Policy {
        &self.with.policy
    }

    /// `sub` prepared: from the cache if this revision was seen before.
    pub(crate) fn get(&self, sub: &Arc<proto::Subscription>) -> Arc<Prepared> {
        {
            let entries = self.entries.lock().expect("prepared lock");
            // A held `Weak` keeps its allocation, so the address cannot be reused by another
            // subscription while the entry exists.
            if let Some((revision, prepared)) = entries.by_id.get(&sub.id)
                && std::ptr::eq(revision.as_ptr(), Arc::as_ptr(sub))
            {
                return prepared.clone();
            }
        }
        let prepared = Arc::new(Prepared::new(sub, &self.with, &self.own_clients));
        let mut entries = self.entries.lock().expect("prepared lock");
        entries.by_id.insert(sub.id.clone(), (Arc::downgrade(sub), prepared.clone()));
        // Swept after the insertion, which the caller's `Arc` keeps alive: the client just made
        // for it must survive the sweep.
        if entries.by_id.len() > entries.sweep_at {
            entries.by_id.retain(|_, (revision, _)| revision.strong_count() > 0);
            entries.sweep_at = (entries.by_id.len() * 2).max(MIN_SWEEP);
            self.own_clients.retain(|id| entries.by_id.contains_key(id));
        }
        prepared
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, url: &str) -> Arc<proto::Subscription> {
        Arc::new(proto::Subscription {
            id: id.into(),
            url: url.into(),
            secrets: vec![proto::SigningSecret {
                secret: herald_signature::Secret::generate().to_text(),
                expires_at: String::new(),
                public_key: String::new(),
            }],
            ..Default::default()
        })
    }

    fn cache() -> PreparedSubscriptions {
        let policy = Arc::new(Policy::default());
        let clients = ClientSettings::new(
            std::time::Duration::from_secs(5),
            4,
            policy.clone(),
            Default::default(),
            Default::default(),
            crate::destinations::tls_config(Vec::new()).unwrap(),
        );
        let tls = crate::destinations::tls_config(Vec::new()).unwrap();
        let brokers = Brokers::new(policy.clone(), Default::default(), std::time::Duration::from_secs(5), tls);
        PreparedSubscriptions::new(PrepareWith { keys: Arc::new(KeyRing::default()), policy, clients, brokers })
    }

    #[test]
    fn a_revision_is_prepared_once_and_a_new_one_again() {
        let cache = cache();
        let first = sub("sub_1", "https://example.com/a");
        let a = cache.get(&first);
        assert!(Arc::ptr_eq(&a, &cache.get(&first)), "same revision, same preparation");
        assert_eq!(a.url.as_ref().unwrap().path(), "/a");
        assert_eq!(a.signers(OffsetDateTime::now_utc()).len(), 1);

        // An equal-looking new revision is prepared afresh: a changed URL is seen.
        let second = sub("sub_1", "https://example.com/b");
        let b = cache.get(&second);
        assert_eq!(b.url.as_ref().unwrap().path(), "/b");
        assert!(matches!(b.client, Ok(None)), "no client certificate, no client of its own");
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn refusals_and_retry_schedules_are_prepared_too() {
        let cache = cache();
        let refused = cache.get(&sub("sub_2", "http://127.0.0.1:9/x"));
        assert!(refused.url.is_err(), "loopback is refused by the default policy");
        let mut with_schedule = (*sub("sub_3", "https://example.com/")).clone();
        with_schedule.retry_schedule = "10s,1m".into();
        let prepared = cache.get(&Arc::new(with_schedule));
        assert_eq!(prepared.retry_schedule, Some(RetryPolicy::parse("10s,1m").unwrap()));
    }

    #[test]
    fn entries_of_dropped_revisions_are_swept() {
        let cache = cache();
        let kept = sub("kept", "https://example.com/");
        cache.get(&kept);
        for i in 0..MIN_SWEEP * 2 {
            cache.get(&sub(&format!("gone_{i}"), "https://example.com/"));
        }
        assert!(cache.len() < MIN_SWEEP + 2, "dropped revisions swept, {} left", cache.len());
        let again = cache.get(&kept);
        assert!(again.url.is_ok());
    }
}
