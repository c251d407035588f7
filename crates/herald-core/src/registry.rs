//! The in-memory view of the `herald-subscriptions` bucket, kept current by a KV watch that
//! starts with the bucket's current state. Every dispatcher and gateway replica holds one, so a
//! change made through the API takes effect everywhere within moments, without restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;

use crate::filter::Filter;
use crate::proto::{Event, Subscription};
use crate::subscription::wants;

#[derive(Debug, Clone)]
struct Entry {
    /// KV revision of this value: a late watch update must not replace a newer local write.
    revision: u64,
    sub: Arc<Subscription>,
    /// Its payload filter, compiled once per revision.
    filter: Option<Arc<Filter>>,
}

/// The subscriptions an event goes to.
#[derive(Debug, Default)]
pub struct Matched {
    /// Enabled, wanting its type, and (if it has a payload filter) matching it.
    pub subs: Vec<Arc<Subscription>>,
    /// How many wanted its type but their filter did not match.
    pub filtered_out: usize,
}

/// Subscriptions by tenant, then by id (ids are ULIDs, so by creation time).
#[derive(Debug)]
pub struct Registry {
    by_tenant: RwLock<HashMap<String, BTreeMap<String, Entry>>>,
    /// True once the watch has delivered the bucket's state as of start-up.
    ready: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { by_tenant: RwLock::default(), ready: watch::Sender::new(false) }
    }
}

impl Registry {
    /// An empty registry, not yet ready.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// One subscription.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Subscription>> {
        let map = self.by_tenant.read().expect("registry lock");
        map.get(tenant)?.get(id).map(|e| e.sub.clone())
    }

    /// One subscription, whatever its tenant.
    pub fn find(&self, id: &str) -> Option<Arc<Subscription>> {
        let map = self.by_tenant.read().expect("registry lock");
        map.values().find_map(|subs| subs.get(id)).map(|e| e.sub.clone())
    }

    /// The enabled subscriptions of `tenant` whose patterns select `event_type`.
    pub fn matching(&self, tenant: &str, event_type: &str) -> Vec<Arc<Subscription>> {
        let map = self.by_tenant.read().expect("registry lock");
        map.get(tenant)
            .map(|subs| subs.values().filter(|e| wants(&e.sub, event_type)).map(|e| e.sub.clone()).collect())
            .unwrap_or_default()
    }

    /// The subscriptions `event` goes to: those of its tenant that want its type and whose
    /// payload filter, if any, it matches. The event's document is parsed once, and only if a
    /// filter needs it.
    pub fn matching_event(&self, event: &Event) -> Matched {
        let map = self.by_tenant.read().expect("registry lock");
        let Some(subs) = map.get(&event.tenant) else { return Matched::default() };
        let mut document = None;
        let mut matched = Matched::default();
        for e in subs.values().filter(|e| wants(&e.sub, &event.r#type)) {
            if let Some(filter) = &e.filter
                && !filter.matches(document.get_or_insert_with(|| crate::filter::event_document(event)))
            {
                matched.filtered_out += 1;
                continue;
            }
            matched.subs.push(e.sub.clone());
        }
        matched
    }

    /// Subscriptions ordered by id (creation time), of one tenant or of all, starting after the
    /// id `after`, at most `limit`.
    pub fn list(&self, tenant: Option<&str>, after: Option<&str>, limit: usize) -> Vec<Arc<Subscription>> {
        let map = self.by_tenant.read().expect("registry lock");
        let mut all: Vec<&Entry> = match tenant {
            Some(t) => map.get(t).map(|s| s.values().collect()).unwrap_or_default(),
            None => map.values().flat_map(|s| s.values()).collect(),
        };
        if tenant.is_none() {
            all.sort_by(|a, b| a.sub.id.cmp(&b.sub.id));
        }
        all.into_iter()
            .filter(|e| after.is_none_or(|a| e.sub.id.as_str() > a))
            .take(limit)
            .map(|e| e.sub.clone())
            .collect()
    }

    /// The tenants that have subscriptions.
    pub fn tenants(&self) -> Vec<String> {
        self.by_tenant.read().expect("registry lock").keys().cloned().collect()
    }

    /// How many subscriptions there are.
    pub fn len(&self) -> usize {
        self.by_tenant.read().expect("registry lock").values().map(BTreeMap::len).sum()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a write this process made (revision from the KV), ahead of the watch.
    pub fn upsert(&self, revision: u64, sub: Subscription) {
        let mut map = self.by_tenant.write().expect("registry lock");
        let slot = map.entry(sub.tenant.clone()).or_default();
        match slot.get(&sub.id) {
            Some(e) if e.revision > revision => {}
            _ => {
                let filter = compile(&sub);
                slot.insert(sub.id.clone(), Entry { revision, sub: Arc::new(sub), filter });
            }
        }
    }

    /// Records a deletion.
    pub fn remove(&self, tenant: &str, id: &str) {
        let mut map = self.by_tenant.write().expect("registry lock");
        if let Some(subs) = map.get_mut(tenant) {
            subs.remove(id);
            if subs.is_empty() {
                map.remove(tenant);
            }
        }
    }

    /// True once the bucket's state at start-up has been loaded.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until [`Registry::is_ready`].
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    fn apply_entry(&self, entry: &kv::Entry) -> Option<(String, String)> {
        let (tenant, id) = entry.key.split_once('.')?;
        match entry.operation {
            kv::Operation::Put => match Subscription::decode(entry.value.as_ref()) {
                Ok(sub) if sub.tenant == tenant && sub.id == id => self.upsert(entry.revision, sub),
                Ok(_) => tracing::warn!(key = %entry.key, "subscription's key disagrees with its content; ignored"),
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable subscription; ignored"),
            },
            kv::Operation::Delete | kv::Operation::Purge => self.remove(tenant, id),
        }
        Some((tenant.to_owned(), id.to_owned()))
    }

    /// Follows the bucket until `shutdown` resolves (see [`follow`]).
    pub async fn follow(self: Arc<Self>, store: kv::Store, shutdown: impl Future<Output = ()>) {
        follow(self, store, shutdown).await
    }
}

impl KvView for Registry {
    fn apply(&self, entry: &kv::Entry) -> Option<String> {
        self.apply_entry(entry).map(|(tenant, id)| format!("{tenant}.{id}"))
    }

    fn retain_only(&self, seen: &HashSet<String>, snapshot_revision: u64) {
        let mut map = self.by_tenant.write().expect("registry lock");
        for (tenant, subs) in map.iter_mut() {
            subs.retain(|id, e| e.revision > snapshot_revision || seen.contains(&format!("{tenant}.{id}")));
        }
        map.retain(|_, subs| !subs.is_empty());
    }

    fn loaded(&self) {
        tracing::info!(subscriptions = self.len(), "subscriptions loaded");
        self.ready.send_replace(true);
    }
}

/// An in-memory view of a KV bucket, kept current by [`follow`].
pub trait KvView: Send + Sync {
    /// Applies one entry (a put or a deletion); returns its key if it is one of the view's.
    fn apply(&self, entry: &kv::Entry) -> Option<String>;
    /// Forgets keys absent from a fresh snapshot (`seen`) unless written after it.
    fn retain_only(&self, seen: &HashSet<String>, snapshot_revision: u64);
    /// The bucket's state as of the watch's start has been applied.
    fn loaded(&self);
}

/// Follows `store` into `view` until `shutdown` resolves: loads the current state, marks the
/// view loaded, then applies every change. A broken watch is re-established after a pause
/// (and the view re-synchronised with the bucket's state then).
pub async fn follow<V: KvView + ?Sized>(view: Arc<V>, store: kv::Store, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            result = watch_once(&*view, &store) => {
                if let Err(e) = result {
                    tracing::warn!(bucket = %store.name, error = %e, "KV watch interrupted; re-establishing");
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn watch_once<V: KvView + ?Sized>(view: &V, store: &kv::Store) -> Result<(), async_nats::Error> {
    let status = store.status().await?;
    let mut watch = store.watch_with_history(">").await?;
    let mut seen = HashSet::new();
    let mut caught_up = status.values() == 0;
    if caught_up {
        view.retain_only(&seen, 0);
        view.loaded();
    }
    let mut max_revision = 0;
    while let Some(entry) = watch.next().await {
        let entry = entry?;
        max_revision = max_revision.max(entry.revision);
        let key = view.apply(&entry);
        if !caught_up {
            seen.extend(key);
            if entry.delta == 0 {
                caught_up = true;
                view.retain_only(&seen, max_revision);
                view.loaded();
            }
        }
    }
    Err("the watch ended".into())
}

/// A subscription's filter, compiled (see [`Filter::parse_stored`]).
fn compile(sub: &Subscription) -> Option<Arc<Filter>> {
    Filter::parse_stored(&sub.filter).map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(tenant: &str, id: &str, types: &[&str]) -> Subscription {
        Subscription {
            id: id.into(),
            tenant: tenant.into(),
            enabled: true,
            event_types: types.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn tenants_are_separate_and_lists_are_ordered() {
        let r = Registry::new();
        r.upsert(1, sub("a", "sub_2", &["order.*"]));
        r.upsert(2, sub("a", "sub_1", &[">"]));
        r.upsert(3, sub("b", "sub_3", &["order.*"]));
        let ids = |v: Vec<Arc<Subscription>>| v.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(r.matching("a", "order.paid")), ["sub_1", "sub_2"]);
        assert_eq!(ids(r.matching("b", "user.created")), Vec::<String>::new());
        assert_eq!(ids(r.list(None, None, 10)), ["sub_1", "sub_2", "sub_3"]);
        assert_eq!(ids(r.list(None, Some("sub_1"), 1)), ["sub_2"]);
        assert_eq!(ids(r.list(Some("b"), None, 10)), ["sub_3"]);
        assert_eq!(r.find("sub_3").unwrap().tenant, "b");
        r.remove("a", "sub_1");
        assert!(r.get("a", "sub_1").is_none());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn payload_filters_choose_among_the_subscriptions_of_a_type() {
        let r = Registry::new();
        let mut big = sub("a", "sub_1", &["order.*"]);
        big.filter = r#"{"data": {"amount": {"$gte": 100}}}"#.into();
        let mut eu = sub("a", "sub_2", &["order.*"]);
        eu.filter = r#"{"data": {"region": "eu"}}"#.into();
        r.upsert(1, big);
        r.upsert(2, eu);
        r.upsert(3, sub("a", "sub_3", &["order.*"]));
        let event = |data: &str| Event {
            tenant: "a".into(),
            r#type: "order.paid".into(),
            data: data.as_bytes().to_vec(),
            ..Default::default()
        };
        let ids = |m: Matched| (m.subs.iter().map(|s| s.id.clone()).collect::<Vec<_>>(), m.filtered_out);
        assert_eq!(
            ids(r.matching_event(&event(r#"{"amount": 500, "region": "us"}"#))),
            (vec!["sub_1".into(), "sub_3".into()], 1)
        );
        assert_eq!(
            ids(r.matching_event(&event(r#"{"amount": 5, "region": "eu"}"#))),
            (vec!["sub_2".into(), "sub_3".into()], 1)
        );
        assert_eq!(ids(r.matching_event(&event("not json"))), (vec!["sub_3".into()], 2));
    }

    #[test]
    fn older_revisions_do_not_overwrite_newer() {
        let r = Registry::new();
        let mut s = sub("a", "sub_1", &["x"]);
        s.url = "new".into();
        r.upsert(5, s.clone());
        s.url = "old".into();
        r.upsert(4, s);
        assert_eq!(r.get("a", "sub_1").unwrap().url, "new");
    }
}
