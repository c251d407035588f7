//! The event-type catalog: the types a deployment's producers publish, with a description, an
//! optional JSON Schema (draft 2020-12) for their `data`, an example and a `deprecated` flag. It
//! lives in the `herald-event-types` bucket; every gateway and dispatcher follows it in memory
//! and compiles each schema once per revision, so checking an event costs one validation.
//!
//! Schemas are self-contained: a `$ref` to anything outside the schema (a URL, a file) is
//! refused when the schema is set — Herald never fetches a schema from elsewhere.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use prost::Message as _;
use serde_json::Value;
use tokio::sync::watch;

use crate::proto::EventType;
use crate::registry::KvView;

/// The bucket the catalog is stored in.
pub const BUCKET: &str = "herald-event-types";

/// Where an event's `data` fails its type's schema, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Violation {
    /// A JSON pointer into `data` (`/amount`), empty for `data` itself.
    pub path: String,
    /// What the schema wants there.
    pub message: String,
}

/// What to do with an event whose `data` violates its type's schema
/// (`HERALD_SCHEMA_VALIDATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Refuse it: 400 over HTTP, a dead letter over NATS.
    #[default]
    Enforce,
    /// Accept it and log a warning (counted in `herald_schema_violations_total`).
    Warn,
    /// Do not check.
    Off,
}

/// Compiles a schema for `data`: draft 2020-12 unless it names another with `$schema`, and no
/// reference outside itself.
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema is an object (or true/false)".into());
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(schema)
        .map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// The first place `data` fails `validator`, if it does.
pub fn violation(validator: &jsonschema::Validator, data: &Value) -> Option<Violation> {
    let error = validator.iter_errors(data).next()?;
    Some(Violation { path: error.instance_path().to_string(), message: error.to_string() })
}

#[derive(Debug)]
struct Entry {
    revision: u64,
    event_type: Arc<EventType>,
    schema: Option<Arc<jsonschema::Validator>>,
}

/// The catalog as this process sees it.
#[derive(Debug)]
pub struct Catalog {
    types: RwLock<BTreeMap<String, Entry>>,
    ready: watch::Sender<bool>,
}

impl Catalog {
    /// Empty, not yet loaded.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { types: RwLock::default(), ready: watch::Sender::new(false) })
    }

    /// True once the bucket's state at start-up has been loaded.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until [`Catalog::is_ready`].
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// One type.
    pub fn get(&self, name: &str) -> Option<Arc<EventType>> {
        self.types.read().expect("catalog lock").get(name).map(|e| e.event_type.clone())
    }

    /// Types ordered by name, after `after`, at most `limit`; deprecated ones only if asked.
    pub fn list(&self, after: Option<&str>, limit: usize, deprecated: bool) -> Vec<Arc<EventType>> {
        let types = self.types.read().expect("catalog lock");
        types
            .values()
            .filter(|e| after.is_none_or(|a| e.event_type.name.as_str() > a))
            .filter(|e| deprecated || !e.event_type.deprecated)
            .take(limit)
            .map(|e| e.event_type.clone())
            .collect()
    }

    /// True if events of `name` have a schema to meet.
    pub fn has_schema(&self, name: &str) -> bool {
        self.types.read().expect("catalog lock").get(name).is_some_and(|e| e.schema.is_some())
    }

    /// Checks an event's `data` (JSON bytes) against its type's schema; `Ok` when the type has
    /// none (or is not in the catalog).
    pub fn check(&self, name: &str, data: &[u8]) -> Result<(), Violation> {
        let Some(schema) = self.types.read().expect("catalog lock").get(name).and_then(|e| e.schema.clone()) else {
            return Ok(());
        };
        let data: Value = serde_json::from_slice(data)
            .map_err(|e| Violation { path: String::new(), message: format!("not JSON: {e}") })?;
        match violation(&schema, &data) {
            None => Ok(()),
            Some(v) => Err(v),
        }
    }

    /// Records a write this process made (revision from the KV), ahead of the watch.
    pub fn upsert(&self, revision: u64, event_type: EventType) {
        let mut types = self.types.write().expect("catalog lock");
        if types.get(&event_type.name).is_some_and(|e| e.revision > revision) {
            return;
        }
        let schema = if event_type.schema.is_empty() {
            None
        } else {
            match serde_json::from_str(&event_type.schema).map_err(|e| e.to_string()).and_then(|s| compile(&s)) {
                Ok(v) => Some(Arc::new(v)),
                Err(e) => {
                    // Checked when it was stored: only a downgrade or a hand-made write gets here.
                    tracing::warn!(event_type = %event_type.name, error = %e, "stored schema does not compile; ignored");
                    None
                }
            }
        };
        types.insert(event_type.name.clone(), Entry { revision, event_type: Arc::new(event_type), schema });
    }

    /// Records a deletion.
    pub fn remove(&self, name: &str) {
        self.types.write().expect("catalog lock").remove(name);
    }
}

impl KvView for Catalog {
    fn apply(&self, entry: &kv::Entry) -> bool {
        match entry.operation {
            kv::Operation::Put => match EventType::decode(entry.value.as_ref()) {
                Ok(t) if t.name == entry.key => self.upsert(entry.revision, t),
                Ok(_) => tracing::warn!(key = %entry.key, "event type's key disagrees with its name; ignored"),
                Err(e) => tracing::warn!(key = %entry.key, error = %e, "undecodable event type; ignored"),
            },
            kv::Operation::Delete | kv::Operation::Purge => self.remove(&entry.key),
        }
        true
    }

    fn retain_only(&self, seen: &HashSet<String>, snapshot_revision: u64) {
        self.types
            .write()
            .expect("catalog lock")
            .retain(|name, e| e.revision > snapshot_revision || seen.contains(name));
    }

    fn is_empty(&self) -> bool {
        self.types.read().expect("catalog lock").is_empty()
    }

    fn loaded(&self) {
        tracing::info!(event_types = self.types.read().expect("catalog lock").len(), "event-type catalog loaded");
        self.ready.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_paid() -> EventType {
        EventType {
            name: "order.paid".into(),
            schema: json!({"type": "object", "required": ["amount"],
                "properties": {"amount": {"type": "integer", "minimum": 1}, "currency": {"enum": ["usd", "eur"]}}})
            .to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn events_are_checked_against_their_types_schema_and_the_newest_revision_wins() {
        let catalog = Catalog::new();
        catalog.upsert(1, order_paid());
        assert!(catalog.has_schema("order.paid"));
        catalog.check("order.paid", br#"{"amount": 5, "currency": "usd"}"#).unwrap();
        let v = catalog.check("order.paid", br#"{"amount": 0}"#).unwrap_err();
        assert_eq!(v.path, "/amount");
        assert!(v.message.contains("minimum"), "{v}");
        assert_eq!(catalog.check("order.paid", br#"{"currency": "usd"}"#).unwrap_err().path, "");
        assert_eq!(catalog.check("order.paid", br#"{"amount": 5, "currency": "gbp"}"#).unwrap_err().path, "/currency");
        catalog.check("user.created", b"42").expect("no schema, no check");
        // A newer revision without the schema applies; an older one does not come back.
        catalog.upsert(3, EventType { name: "order.paid".into(), ..Default::default() });
        catalog.upsert(2, order_paid());
        catalog.check("order.paid", b"{}").expect("schema removed");
    }

    #[test]
    fn schemas_must_be_valid_and_self_contained() {
        assert!(compile(&json!({"type": "object"})).is_ok());
        assert!(compile(&json!({"type": "no-such-type"})).unwrap_err().contains("not a valid JSON Schema"));
        assert!(compile(&json!({"minimum": "ten"})).is_err());
        assert!(compile(&json!("string")).is_err());
        assert!(compile(&json!({"$ref": "https://example.com/schema.json"})).is_err(), "nothing is fetched");
        assert!(compile(&json!({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"})).is_ok());
    }
}
