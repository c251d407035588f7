//! The in-memory view of the `herald-subscriptions` bucket, kept current by a KV watch that
//! starts with the bucket's current state. Every dispatcher and gateway replica holds one, so a
//! change made through the API takes effect everywhere within moments, without restarts.
//!
//! A million subscriptions have to fit in every replica's memory. So each is held as it is
//! stored (protobuf, less its id and tenant, which are its keys: about 250 B), in one allocation
//! with its patterns, beside the little else matching an event reads (enabled, its compiled
//! filter): about 350 B in all. It is decoded when it is asked for. The subscriptions decoded lately are kept ([`DECODED_KEPT`]), so deliveries to
//! the same subscriptions decode nothing and keep the same `Arc` (which prepared signers are
//! keyed by). Those that are ordered or limited, or whose ordering changed lately, are also
//! indexed, so what looks for them every second does not go through every subscription.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use async_nats::jetstream::kv;
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::watch;

use crate::filter::Filter;
use crate::proto::{Event, Subscription};

/// Decoded subscriptions kept for reuse (about 1.5 KB each with their prepared signers).
pub const DECODED_KEPT: usize = 16_384;

/// How long a change of ordering is remembered (see [`Registry::ordering_changed_within`]).
pub const ORDERING_CHANGE_KEPT: Duration = Duration::from_secs(60);

/// A subscription id `sub_{ULID}` as the ULID's 16 bytes, big-endian: ordered as the id is.
type Key = [u8; 16];

fn key_of(id: &str) -> Option<Key> {
    let ulid = ulid::Ulid::from_string(id.strip_prefix("sub_")?).ok()?;
    Some(ulid.0.to_be_bytes())
}

fn id_of(key: &Key) -> String {
    format!("sub_{}", ulid::Ulid(u128::from_be_bytes(*key)))
}

const ENABLED: u8 = 1;
const FIFO: u8 = 2;
const LANE: u8 = 4;
/// One of its type patterns has a wildcard; without, each selects its own text only.
const WILDCARDS: u8 = 8;

#[derive(Debug)]
struct Entry {
    key: Key,
    /// KV revision of this value: a late watch update must not replace a newer local write.
    revision: u64,
    /// Its event-type patterns, space-separated, then the subscription as stored less its id
    /// and tenant: one allocation.
    data: Box<[u8]>,
    /// Where the patterns end in `data`.
    patterns_len: u32,
    /// Its payload filter, compiled once per revision.
    filter: Option<Arc<Filter>>,
    flags: u8,
}

/// A stored subscription read where it lies: its keys, what routing an event reads, and where
/// the other fields are. A million are read at start, so nothing is decoded or allocated but
/// what is kept.
#[derive(Default)]
struct Stored<'a> {
    id: &'a str,
    tenant: &'a str,
    patterns: Vec<&'a str>,
    enabled: bool,
    needs_lane: bool,
    fifo: bool,
    filter: &'a str,
    /// The fields other than the id and tenant, as stored.
    rest: Vec<&'a [u8]>,
}

impl<'a> Stored<'a> {
    fn read(mut buf: &'a [u8]) -> Result<Self, String> {
        use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
        let mut out = Stored::default();
        let text = |bytes: &'a [u8]| std::str::from_utf8(bytes).map_err(|e| e.to_string());
        let varint = |value: &mut &'a [u8]| decode_varint(value).map_err(|e| e.to_string());
        while !buf.is_empty() {
            let field = buf;
            let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
            let value = buf;
            skip_field(wire_type, tag, &mut buf, DecodeContext::default()).map_err(|e| e.to_string())?;
            let whole = &field[..field.len() - buf.len()];
            let mut value = &value[..value.len() - buf.len()];
            // A length-delimited value: its length, then as many bytes (checked by the skip).
            let bytes = |value: &mut &'a [u8]| -> Result<&'a str, String> {
                let len = varint(value)? as usize;
                text(&value[..len])
            };
            match (tag, wire_type) {
                (1, WireType::LengthDelimited) => out.id = bytes(&mut value)?,
                (2, WireType::LengthDelimited) => out.tenant = bytes(&mut value)?,
                (4, WireType::LengthDelimited) => out.patterns.push(bytes(&mut value)?),
                (5, WireType::Varint) => out.enabled = varint(&mut value)? != 0,
                (12 | 13, WireType::Varint) => out.needs_lane |= varint(&mut value)? != 0,
                (17, WireType::LengthDelimited) => out.fifo = bytes(&mut value)? == crate::subscription::FIFO,
                (19, WireType::LengthDelimited) => out.filter = bytes(&mut value)?,
                _ => {}
            }
            if tag > 2 {
                out.rest.push(whole);
            }
        }
        out.needs_lane |= out.fifo;
        Ok(out)
    }
}

impl Entry {
    fn new(key: Key, revision: u64, stored: &Stored<'_>) -> Self {
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        let wildcards = stored.patterns.iter().any(|p| crate::pattern::has_wildcard(p));
        let flags = flag(stored.enabled, ENABLED)
            | flag(stored.fifo, FIFO)
            | flag(stored.needs_lane, LANE)
            | flag(wildcards, WILDCARDS);
        let patterns_len = stored.patterns.iter().map(|p| p.len() + 1).sum::<usize>().saturating_sub(1);
        let mut data = Vec::with_capacity(patterns_len + stored.rest.iter().map(|f| f.len()).sum::<usize>());
        for (i, pattern) in stored.patterns.iter().enumerate() {
            if i > 0 {
                data.push(b' ');
            }
            data.extend_from_slice(pattern.as_bytes());
        }
        for field in &stored.rest {
            data.extend_from_slice(field);
        }
        let filter = Filter::parse_stored(stored.filter).map(Arc::new);
        Self { key, revision, data: data.into_boxed_slice(), patterns_len: patterns_len as u32, filter, flags }
    }

    /// Its type patterns, as bytes (fan-out reads them for every event of the tenant).
    fn patterns(&self) -> impl Iterator<Item = &[u8]> {
        self.data[..self.patterns_len as usize].split(|&b| b == b' ').filter(|p| !p.is_empty())
    }

    fn wants(&self, event_type: &str) -> bool {
        if self.flags & ENABLED == 0 {
            return false;
        }
        let wanted = event_type.as_bytes();
        if self.flags & WILDCARDS == 0 {
            return self.patterns().any(|p| p == wanted);
        }
        self.patterns().any(|p| crate::pattern::matches_bytes(p, wanted))
    }

    fn decode(&self, tenant: &str) -> Arc<Subscription> {
        let mut sub = Subscription::decode(&self.data[self.patterns_len as usize..]).unwrap_or_default();
        sub.id = id_of(&self.key);
        sub.tenant = tenant.to_owned();
        Arc::new(sub)
    }
}

/// The subscriptions an event goes to.
#[derive(Debug, Default)]
pub struct Matched {
    /// Enabled, wanting its type, and (if it has a payload filter) matching it.
    pub subs: Vec<Arc<Subscription>>,
    /// How many wanted its type but their filter did not match.
    pub filtered_out: usize,
}

/// How many subscriptions a tenant has, and how many of them are disabled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TenantCount {
    pub subscriptions: usize,
    pub disabled: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each tenant's subscriptions, ordered by id (ids are ULIDs, so by creation time).
    tenants: HashMap<Box<str>, Vec<Entry>>,
    count: usize,
    /// Ordered or limited subscriptions, and those whose ordering changed lately, with their
    /// tenant.
    notable: HashMap<Key, Box<str>>,
    /// When this replica learned that a subscription's ordering changed.
    ordering_changed: HashMap<Key, Instant>,
}

impl Inner {
    fn entry(&self, tenant: &str, key: &Key) -> Option<&Entry> {
        let entries = self.tenants.get(tenant)?;
        entries.binary_search_by(|e| e.key.cmp(key)).ok().map(|i| &entries[i])
    }

    fn find(&self, key: &Key) -> Option<(&str, &Entry)> {
        if let Some(tenant) = self.notable.get(key) {
            return self.entry(tenant, key).map(|e| (&**tenant, e));
        }
        self.tenants.iter().find_map(|(tenant, entries)| {
            entries.binary_search_by(|e| e.key.cmp(key)).ok().map(|i| (&**tenant, &entries[i]))
        })
    }

    fn changed_within(&self, key: &Key, within: Duration) -> bool {
        self.ordering_changed.get(key).is_some_and(|at| at.elapsed() < within)
    }
}

/// Subscriptions by tenant, then by id.
#[derive(Debug)]
pub struct Registry {
    inner: RwLock<Inner>,
    /// Subscriptions decoded lately, with the revision each was decoded from.
    decoded: Mutex<HashMap<Key, (u64, Arc<Subscription>)>>,
    /// True once the watch has delivered the bucket's state as of start-up.
    ready: watch::Sender<bool>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { inner: RwLock::default(), decoded: Mutex::default(), ready: watch::Sender::new(false) }
    }
}

impl Registry {
    /// An empty registry, not yet ready.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `entry` of `tenant` decoded, from the kept ones if this revision was decoded lately.
    fn decoded(&self, tenant: &str, entry: &Entry) -> Arc<Subscription> {
        let mut decoded = self.decoded.lock().expect("registry cache lock");
        if let Some((revision, sub)) = decoded.get(&entry.key)
            && *revision == entry.revision
        {
            return sub.clone();
        }
        let sub = entry.decode(tenant);
        if decoded.len() >= DECODED_KEPT {
            // Whichever comes first: the map's order is as good as random.
            if let Some(gone) = decoded.keys().next().copied() {
                decoded.remove(&gone);
            }
        }
        decoded.insert(entry.key, (entry.revision, sub.clone()));
        sub
    }

    /// One subscription.
    pub fn get(&self, tenant: &str, id: &str) -> Option<Arc<Subscription>> {
        let key = key_of(id)?;
        let inner = self.inner.read().expect("registry lock");
        inner.entry(tenant, &key).map(|e| self.decoded(tenant, e))
    }

    /// True if `tenant` has subscription `id`.
    pub fn contains(&self, tenant: &str, id: &str) -> bool {
        key_of(id).is_some_and(|key| self.inner.read().expect("registry lock").entry(tenant, &key).is_some())
    }

    /// One subscription, whatever its tenant (unless it was decoded lately, each tenant is
    /// searched: a few milliseconds with 100,000 tenants).
    pub fn find(&self, id: &str) -> Option<Arc<Subscription>> {
        let key = key_of(id)?;
        // One decoded lately names its tenant.
        let recent = self.decoded.lock().expect("registry cache lock").get(&key).map(|(_, sub)| sub.tenant.clone());
        let inner = self.inner.read().expect("registry lock");
        if let Some(tenant) = recent
            && let Some(e) = inner.entry(&tenant, &key)
        {
            return Some(self.decoded(&tenant, e));
        }
        inner.find(&key).map(|(tenant, e)| self.decoded(tenant, e))
    }

    /// The enabled subscriptions of `tenant` whose patterns select `event_type`.
    pub fn matching(&self, tenant: &str, event_type: &str) -> Vec<Arc<Subscription>> {
        let inner = self.inner.read().expect("registry lock");
        let Some(entries) = inner.tenants.get(tenant) else { return Vec::new() };
        entries.iter().filter(|e| e.wants(event_type)).map(|e| self.decoded(tenant, e)).collect()
    }

    /// The subscriptions `event` goes to: those of its tenant that want its type and whose
    /// payload filter, if any, it matches. The event's document is parsed once, and only if a
    /// filter needs it.
    pub fn matching_event(&self, event: &Event) -> Matched {
        let inner = self.inner.read().expect("registry lock");
        let Some(entries) = inner.tenants.get(event.tenant.as_str()) else { return Matched::default() };
        let mut document = None;
        let mut matched = Matched::default();
        for e in entries.iter().filter(|e| e.wants(&event.r#type)) {
            if let Some(filter) = &e.filter
                && !filter.matches(document.get_or_insert_with(|| crate::filter::event_document(event)))
            {
                matched.filtered_out += 1;
                continue;
            }
            matched.subs.push(self.decoded(&event.tenant, e));
        }
        matched
    }

    /// Subscriptions ordered by id (creation time), of one tenant or of all, starting after the
    /// id `after`, at most `limit`.
    pub fn list(&self, tenant: Option<&str>, after: Option<&str>, limit: usize) -> Vec<Arc<Subscription>> {
        let inner = self.inner.read().expect("registry lock");
        // Where a tenant's list starts: after `after`, compared as ids are.
        let start = |entries: &[Entry]| match after {
            None => 0,
            Some(a) => match key_of(a) {
                Some(key) => entries.partition_point(|e| e.key <= key),
                None => entries.partition_point(|e| id_of(&e.key).as_str() <= a),
            },
        };
        match tenant {
            Some(t) => {
                let Some(entries) = inner.tenants.get(t) else { return Vec::new() };
                entries[start(entries)..].iter().take(limit).map(|e| e.decode(t)).collect()
            }
            None => {
                // The next of each tenant's lists, smallest id first.
                let mut heads: BinaryHeap<std::cmp::Reverse<(Key, &str, usize)>> = inner
                    .tenants
                    .iter()
                    .filter_map(|(t, entries)| {
                        let at = start(entries);
                        entries.get(at).map(|e| std::cmp::Reverse((e.key, &**t, at)))
                    })
                    .collect();
                let mut out = Vec::new();
                while out.len() < limit
                    && let Some(std::cmp::Reverse((_, t, at))) = heads.pop()
                {
                    let entries = &inner.tenants[t];
                    out.push(entries[at].decode(t));
                    if let Some(next) = entries.get(at + 1) {
                        heads.push(std::cmp::Reverse((next.key, t, at + 1)));
                    }
                }
                out
            }
        }
    }

    /// The subscriptions that are ordered or limited (that need a lane), or whose ordering
    /// changed within [`ORDERING_CHANGE_KEPT`]: the few that lanes and the ordered fan-out
    /// look at, without going through every subscription.
    pub fn notable(&self) -> Vec<Arc<Subscription>> {
        {
            let mut inner = self.inner.write().expect("registry lock");
            let Inner { tenants, notable, ordering_changed, .. } = &mut *inner;
            ordering_changed.retain(|_, at| at.elapsed() < ORDERING_CHANGE_KEPT);
            notable.retain(|key, tenant| {
                let entries = tenants.get(&**tenant).map(Vec::as_slice).unwrap_or_default();
                let entry = entries.binary_search_by(|e| e.key.cmp(key)).ok().map(|i| &entries[i]);
                entry.is_some_and(|e| e.flags & (FIFO | LANE) != 0 || ordering_changed.contains_key(key))
            });
        }
        let inner = self.inner.read().expect("registry lock");
        let mut subs: Vec<_> =
            inner.notable.iter().filter_map(|(key, t)| inner.entry(t, key).map(|e| self.decoded(t, e))).collect();
        subs.sort_by(|a, b| a.id.cmp(&b.id));
        subs
    }

    /// True if this replica learned within `within` that subscription `id`'s ordering changed
    /// (from unordered to `fifo` or back).
    pub fn ordering_changed_within(&self, id: &str, within: Duration) -> bool {
        key_of(id).is_some_and(|key| self.inner.read().expect("registry lock").changed_within(&key, within))
    }

    /// The tenants that have subscriptions.
    pub fn tenants(&self) -> Vec<String> {
        self.inner.read().expect("registry lock").tenants.keys().map(|t| t.to_string()).collect()
    }

    /// True if `tenant` has subscriptions.
    pub fn has_tenant(&self, tenant: &str) -> bool {
        self.inner.read().expect("registry lock").tenants.contains_key(tenant)
    }

    /// Each tenant's count of subscriptions, without decoding them.
    pub fn tenant_counts(&self) -> HashMap<String, TenantCount> {
        let inner = self.inner.read().expect("registry lock");
        inner
            .tenants
            .iter()
            .map(|(t, entries)| {
                let disabled = entries.iter().filter(|e| e.flags & ENABLED == 0).count();
                (t.to_string(), TenantCount { subscriptions: entries.len(), disabled })
            })
            .collect()
    }

    /// How many subscriptions there are.
    pub fn len(&self) -> usize {
        self.inner.read().expect("registry lock").count
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records a write this process made (revision from the KV), ahead of the watch. A
    /// subscription whose id is not `sub_` and a ULID (none the API makes) is ignored.
    pub fn upsert(&self, revision: u64, sub: Subscription) {
        let encoded = sub.encode_to_vec();
        match Stored::read(&encoded) {
            Ok(stored) => self.put(revision, &stored),
            Err(e) => tracing::warn!(id = %sub.id, error = %e, "subscription cannot be read back; ignored"),
        }
    }

    fn put(&self, revision: u64, stored: &Stored<'_>) {
        let (tenant, id) = (stored.tenant, stored.id);
        let Some(key) = key_of(id) else {
            tracing::warn!(id, "subscription id is not `sub_` and a ULID; ignored");
            return;
        };
        let (fifo, notable) = (stored.fifo, stored.needs_lane);
        let mut inner = self.inner.write().expect("registry lock");
        let inner = &mut *inner;
        if !inner.tenants.contains_key(tenant) {
            inner.tenants.insert(tenant.into(), Vec::new());
        }
        let entries = inner.tenants.get_mut(tenant).expect("just inserted");
        let changed = match entries.binary_search_by(|e| e.key.cmp(&key)) {
            Ok(i) if entries[i].revision > revision => return,
            Ok(i) => {
                let was_fifo = entries[i].flags & FIFO != 0;
                entries[i] = Entry::new(key, revision, stored);
                was_fifo != fifo
            }
            Err(i) => {
                if entries.len() == entries.capacity() {
                    // An eighth more room, not twice as much: most tenants have a few. (Twice as
                    // much and fitted once loaded is faster to load, and leaves ~60 MB more
                    // behind in the allocator per million.)
                    entries.reserve_exact((entries.len() / 8).max(1));
                }
                entries.insert(i, Entry::new(key, revision, stored));
                inner.count += 1;
                false
            }
        };
        if changed {
            inner.ordering_changed.insert(key, Instant::now());
        }
        if notable || changed {
            inner.notable.insert(key, tenant.into());
        }
    }

    /// Records a deletion.
    pub fn remove(&self, tenant: &str, id: &str) {
        let Some(key) = key_of(id) else { return };
        let mut inner = self.inner.write().expect("registry lock");
        let Some(entries) = inner.tenants.get_mut(tenant) else { return };
        if let Ok(i) = entries.binary_search_by(|e| e.key.cmp(&key)) {
            entries.remove(i);
            let empty = entries.is_empty();
            inner.count -= 1;
            if empty {
                inner.tenants.remove(tenant);
            }
        }
        inner.notable.remove(&key);
        self.decoded.lock().expect("registry cache lock").remove(&key);
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

    fn apply_entry(&self, entry: &kv::Entry) -> bool {
        let Some((tenant, id)) = entry.key.split_once('.') else { return false };
        match entry.operation {
            kv::Operation::Put => match Stored::read(entry.value.as_ref()) {
                Ok(stored) if stored.tenant == tenant && stored.id == id => self.put(entry.revision, &stored),
                Ok(_) => tracing::warn!(key = %entry.key, "subscription's key disagrees with its content; ignored"),
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable subscription; ignored"),
            },
            kv::Operation::Delete | kv::Operation::Purge => self.remove(tenant, id),
        }
        true
    }

    /// Follows the bucket until `shutdown` resolves (see [`follow`]).
    pub async fn follow(self: Arc<Self>, store: kv::Store, shutdown: impl Future<Output = ()>) {
        follow(self, store, shutdown).await
    }
}

impl KvView for Registry {
    fn apply(&self, entry: &kv::Entry) -> bool {
        self.apply_entry(entry)
    }

    fn retain_only(&self, seen: &HashSet<String>, snapshot_revision: u64) {
        let mut inner = self.inner.write().expect("registry lock");
        let inner = &mut *inner;
        let mut count = 0;
        for (tenant, entries) in inner.tenants.iter_mut() {
            entries.retain(|e| e.revision > snapshot_revision || seen.contains(&format!("{tenant}.{}", id_of(&e.key))));
            count += entries.len();
        }
        inner.tenants.retain(|_, entries| !entries.is_empty());
        inner.count = count;
    }

    fn is_empty(&self) -> bool {
        Registry::is_empty(self)
    }

    fn loaded(&self) {
        tracing::info!(subscriptions = self.len(), "subscriptions loaded");
        self.ready.send_replace(true);
    }
}

/// An in-memory view of a KV bucket, kept current by [`follow`].
pub trait KvView: Send + Sync {
    /// Applies one entry (a put or a deletion); true if its key is one of the view's.
    fn apply(&self, entry: &kv::Entry) -> bool;
    /// Forgets keys absent from a fresh snapshot (`seen`) unless written after it.
    fn retain_only(&self, seen: &HashSet<String>, snapshot_revision: u64);
    /// True if the view holds nothing (then a snapshot has nothing to forget, and its keys
    /// need not be collected).
    fn is_empty(&self) -> bool;
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
    // Loading into an empty view (as at start), nothing is forgotten: no keys to collect.
    let collect = !view.is_empty();
    let mut caught_up = status.values() == 0;
    if caught_up {
        view.retain_only(&seen, 0);
        view.loaded();
    }
    let mut max_revision = 0;
    while let Some(entry) = watch.next().await {
        let entry = entry?;
        max_revision = max_revision.max(entry.revision);
        let ours = view.apply(&entry);
        if !caught_up {
            if collect && ours {
                seen.insert(entry.key.clone());
            }
            if entry.delta == 0 {
                caught_up = true;
                if collect {
                    view.retain_only(&seen, max_revision);
                }
                view.loaded();
            }
        }
    }
    Err("the watch ended".into())
}

#[cfg(test)]
mod tests;
