//! Events in and out: validating what clients send (HTTP JSON, or protobuf/JSON straight on
//! NATS) into a [`proto::Event`], and rendering the webhook body a subscriber receives.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ids::{EventId, EventType, TenantId};
use crate::proto;

/// Why an event was refused: the field at fault and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidEvent {
    /// The JSON field (or `subject`, `body`) that is wrong.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidEvent {
    InvalidEvent { field, message: message.into() }
}

/// An event as clients send it in JSON, over HTTP or on NATS. Borrows from the JSON text: its
/// strings (unless they hold escapes) and `data` are not copied until the event is validated.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventInput<'a> {
    /// Idempotency key; generated when absent.
    #[serde(borrow)]
    pub id: Option<Text<'a>>,
    /// Event type, e.g. `order.created`.
    #[serde(rename = "type", borrow)]
    pub event_type: Option<Text<'a>>,
    /// Any JSON document.
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    /// Tenant; `default` when absent.
    #[serde(borrow)]
    pub tenant: Option<Text<'a>>,
    /// Free-form origin.
    #[serde(borrow)]
    pub source: Option<Text<'a>>,
    /// RFC 3339; the time of acceptance when absent.
    #[serde(borrow)]
    pub time: Option<Text<'a>>,
}

/// A JSON string: borrowed from the JSON text, or owned when it held escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    /// The text as an owned string (a copy only when borrowed).
    pub fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(s: &'a str) -> Self {
        Self(Cow::Borrowed(s))
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

impl EventInput<'_> {
    /// Validates an HTTP-submitted event. A missing id is generated, a missing tenant is
    /// `default`, a missing time is now.
    pub fn validate(self) -> Result<proto::Event, InvalidEvent> {
        let event_type = self.event_type.ok_or_else(|| invalid("type", "is required (e.g. \"order.created\")"))?;
        let data = self
            .data
            .ok_or_else(|| invalid("data", "is required: any JSON value but null, e.g. {\"order_id\": 42}"))?;
        let id = match self.id {
            Some(id) => EventId::parse(&id).map_err(|e| invalid("id", e.0))?,
            None => EventId::generate(),
        };
        let tenant = match self.tenant {
            Some(t) => TenantId::parse(&t).map_err(|e| invalid("tenant", e.0))?,
            None => TenantId::default_tenant(),
        };
        let event_type = EventType::parse(&event_type).map_err(|e| invalid("type", e.0))?;
        let time = match self.time {
            Some(t) => normalize_time(&t)?,
            None => crate::now_rfc3339(),
        };
        let source = self.source.map(Text::into_owned).unwrap_or_default();
        if source.len() > 1024 {
            return Err(invalid("source", "must be at most 1024 characters"));
        }
        Ok(proto::Event {
            id: id.into_string(),
            r#type: event_type.into_string(),
            tenant: tenant.into_string(),
            source,
            time,
            data: data.get().as_bytes().to_vec(),
        })
    }
}

fn normalize_time(t: &str) -> Result<String, InvalidEvent> {
    OffsetDateTime::parse(t, &Rfc3339)
        .map(crate::rfc3339)
        .map_err(|_| invalid("time", format!("{t:?} is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)")))
}

/// What the dispatcher knows of a message taken from `HERALD_EVENTS`.
#[derive(Debug, Clone, Copy)]
pub struct StoredAt {
    /// Its stream sequence.
    pub sequence: u64,
    /// When JetStream stored it.
    pub time: OffsetDateTime,
}

/// Decodes and validates an event taken from `herald.events.{tenant}.{type}`: protobuf
/// `herald.v1.Event`, or JSON when `content_type` is `application/json` or, with no
/// `content_type`, when the payload starts with `{`. Empty tenant, type, id
/// and time are filled in from the subject, the `Nats-Msg-Id` and the stream; fields that
/// disagree with the subject are refused.
pub fn decode_stored(
    subject: &str,
    content_type: Option<&str>,
    msg_id: Option<&str>,
    payload: &[u8],
    stored: StoredAt,
) -> Result<proto::Event, InvalidEvent> {
    let (subject_tenant, subject_type) = crate::partition::split_event_subject(subject).ok_or_else(|| {
        invalid("subject", format!("{subject:?} is not an event subject: publish to herald.events.{{tenant}}.{{type}}"))
    })?;
    let subject_tenant = TenantId::parse(subject_tenant).map_err(|e| invalid("subject", e.0))?;
    let subject_type = EventType::parse(subject_type).map_err(|e| invalid("subject", e.0))?;

    // Without a Content-Type the first byte tells: a protobuf Event never starts with `{`
    // (0x7B would open a group for field 15, a wire type proto3 does not write). Publishers
    // may then skip the header, which nats-server would otherwise parse on every event.
    let is_json = match content_type {
        Some(ct) => ct.trim().starts_with("application/json"),
        None => payload.first() == Some(&b'{'),
    };
    let mut event = if is_json {
        let input: EventInput =
            serde_json::from_slice(payload).map_err(|e| invalid("body", format!("is not a valid JSON event: {e}")))?;
        let data = input.data.ok_or_else(|| invalid("data", "is required"))?;
        let owned = |text: Option<Text>| text.map(Text::into_owned).unwrap_or_default();
        proto::Event {
            id: owned(input.id),
            r#type: owned(input.event_type),
            tenant: owned(input.tenant),
            source: owned(input.source),
            time: owned(input.time),
            data: data.get().as_bytes().to_vec(),
        }
    } else {
        <proto::Event as prost::Message>::decode(payload).map_err(|e| {
            invalid(
                "body",
                format!("is not a protobuf herald.v1.Event ({e}); a JSON event starts with `{{` or carries Content-Type: application/json"),
            )
        })?
    };

    if event.tenant.is_empty() {
        event.tenant = subject_tenant.into_string();
    } else if event.tenant != subject_tenant.as_str() {
        return Err(invalid(
            "tenant",
            format!("{:?} differs from the subject's tenant {subject_tenant}", event.tenant),
        ));
    }
    if event.r#type.is_empty() {
        event.r#type = subject_type.into_string();
    } else if event.r#type != subject_type.as_str() {
        return Err(invalid("type", format!("{:?} differs from the subject's type {subject_type}", event.r#type)));
    }
    if event.id.is_empty() {
        event.id = match msg_id {
            Some(id) => id.to_owned(),
            None => {
                EventId::derived(stored.sequence, (stored.time.unix_timestamp_nanos() / 1_000_000) as u64).into_string()
            }
        };
    }
    EventId::parse(&event.id).map_err(|e| invalid("id", e.0))?;
    event.time = if event.time.is_empty() { crate::rfc3339(stored.time) } else { normalize_time(&event.time)? };
    if event.data.is_empty() {
        return Err(invalid("data", "is empty; it must be a JSON document"));
    }
    // JSON events had `data` checked as they were parsed; protobuf ones carry it as bytes.
    if !is_json {
        serde_json::from_slice::<serde::de::IgnoredAny>(&event.data)
            .map_err(|e| invalid("data", format!("is not valid JSON: {e}")))?;
    }
    Ok(event)
}

/// The exact webhook request body: `{"id","type","timestamp","tenant","data"}` with `data`
/// copied verbatim. `data` was validated as JSON when the event was accepted (by the gateway, or
/// by the fan-out for events published straight to NATS) and is not parsed again here: for large
/// payloads that scan would be a large part of a delivery's cost. Fails if `data` is not UTF-8
/// or empty, which validation rules out.
pub fn webhook_body(event: &proto::Event) -> Result<Vec<u8>, InvalidEvent> {
    let data = std::str::from_utf8(&event.data).map_err(|_| invalid("data", "is not UTF-8"))?;
    if data.trim().is_empty() {
        return Err(invalid("data", "is empty"));
    }
    let fields = [
        ("{\"id\":", &event.id),
        (",\"type\":", &event.r#type),
        (",\"timestamp\":", &event.time),
        (",\"tenant\":", &event.tenant),
    ];
    let mut body =
        Vec::with_capacity(data.len() + fields.iter().map(|(k, v)| k.len() + v.len() + 2).sum::<usize>() + 16);
    for (key, value) in fields {
        body.extend_from_slice(key.as_bytes());
        serde_json::to_writer(&mut body, value).map_err(|e| invalid("data", e.to_string()))?;
    }
    body.extend_from_slice(b",\"data\":");
    body.extend_from_slice(data.as_bytes());
    body.push(b'}');
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> Result<proto::Event, InvalidEvent> {
        serde_json::from_str::<EventInput>(json).unwrap().validate()
    }

    fn stored() -> StoredAt {
        StoredAt { sequence: 9, time: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap() }
    }

    #[test]
    fn http_event_defaults() {
        let e = input(r#"{"type":"order.created","data":{"n":1}}"#).unwrap();
        assert!(e.id.starts_with("evt_"));
        assert_eq!(e.tenant, "default");
        assert_eq!(e.data, br#"{"n":1}"#);
        assert!(!e.time.is_empty());
    }

    #[test]
    fn http_event_fields_are_borrowed_unless_escaped() {
        let json = r#"{"id":"a-1","type":"order\u002ecreated","source":"x\"y","data":[1, "\u00e9"]}"#;
        let parsed: EventInput = serde_json::from_str(json).unwrap();
        assert!(matches!(parsed.id.as_ref().unwrap().0, Cow::Borrowed("a-1")));
        assert!(matches!(parsed.event_type.as_ref().unwrap().0, Cow::Owned(_)));
        let e = parsed.validate().unwrap();
        assert_eq!((e.id.as_str(), e.r#type.as_str(), e.source.as_str()), ("a-1", "order.created", "x\"y"));
        assert_eq!(e.data, br#"[1, "\u00e9"]"#, "data verbatim");
        assert_eq!(input(r#"{"type":"a","data":null}"#).unwrap_err().field, "data");
    }

    #[test]
    fn http_event_errors_name_the_field() {
        assert_eq!(input(r#"{"data":1}"#).unwrap_err().field, "type");
        assert_eq!(input(r#"{"type":"a"}"#).unwrap_err().field, "data");
        assert_eq!(input(r#"{"type":"a..b","data":1}"#).unwrap_err().field, "type");
        assert_eq!(input(r#"{"type":"a","data":1,"id":"x.y"}"#).unwrap_err().field, "id");
        assert_eq!(input(r#"{"type":"a","data":1,"tenant":"a b"}"#).unwrap_err().field, "tenant");
        assert_eq!(input(r#"{"type":"a","data":1,"time":"yesterday"}"#).unwrap_err().field, "time");
        assert!(serde_json::from_str::<EventInput>(r#"{"type":"a","data":1,"colour":"red"}"#).is_err());
    }

    #[test]
    fn stored_protobuf_takes_gaps_from_subject_and_stream() {
        let e = proto::Event { data: b"[1,2]".to_vec(), ..Default::default() };
        let bytes = prost::Message::encode_to_vec(&e);
        let got = decode_stored("herald.events.acme.order.paid", None, None, &bytes, stored()).unwrap();
        assert_eq!(got.tenant, "acme");
        assert_eq!(got.r#type, "order.paid");
        assert_eq!(got.time, "2023-11-14T22:13:20Z");
        assert_eq!(got.id, EventId::derived(9, 1_700_000_000_000).into_string());
        let with_msg_id = decode_stored("herald.events.acme.order.paid", None, Some("m-1"), &bytes, stored()).unwrap();
        assert_eq!(with_msg_id.id, "m-1");
    }

    #[test]
    fn stored_json_and_mismatches() {
        let json = br#"{"id":"e1","data":{"a":true}}"#;
        let got =
            decode_stored("herald.events.t1.user.signup", Some("application/json"), None, json, stored()).unwrap();
        assert_eq!((got.id.as_str(), got.tenant.as_str(), got.r#type.as_str()), ("e1", "t1", "user.signup"));
        let wrong_tenant = br#"{"tenant":"t2","data":1}"#;
        let err =
            decode_stored("herald.events.t1.a", Some("application/json"), None, wrong_tenant, stored()).unwrap_err();
        assert_eq!(err.field, "tenant");
        let not_json = proto::Event { data: b"{nope".to_vec(), ..Default::default() };
        let err = decode_stored("herald.events.t1.a", None, None, &prost::Message::encode_to_vec(&not_json), stored());
        assert_eq!(err.unwrap_err().field, "data");
        let err = decode_stored("herald.events.t1.a", None, None, b"\xff\xff\xff", stored()).unwrap_err();
        assert_eq!(err.field, "body");
        let err = decode_stored("herald.events.t1", None, None, b"", stored()).unwrap_err();
        assert_eq!(err.field, "subject");
    }

    #[test]
    fn stored_json_needs_no_content_type() {
        let json = br#"{"id":"e1","data":{"a":true}}"#;
        let got = decode_stored("herald.events.t1.user.signup", None, None, json, stored()).unwrap();
        assert_eq!(
            (got.id.as_str(), got.r#type.as_str(), got.data.as_slice()),
            ("e1", "user.signup", &br#"{"a":true}"#[..])
        );
        // Broken JSON is reported as JSON, not as a failed protobuf decode.
        let err = decode_stored("herald.events.t1.a", None, None, br#"{"data":"#, stored()).unwrap_err();
        assert_eq!(err.field, "body");
        assert!(err.to_string().contains("not a valid JSON event"), "{err}");
        // A Content-Type that is not JSON still means protobuf, whatever the first byte.
        let err = decode_stored("herald.events.t1.a", Some("application/x-protobuf"), None, json, stored());
        assert!(err.unwrap_err().to_string().contains("not a protobuf"));
        // Protobuf events (whose first byte is a field tag) are unaffected.
        let e = proto::Event { id: "p1".into(), data: b"1".to_vec(), ..Default::default() };
        let bytes = prost::Message::encode_to_vec(&e);
        assert_ne!(bytes[0], b'{');
        assert_eq!(decode_stored("herald.events.t1.a", None, None, &bytes, stored()).unwrap().id, "p1");
    }

    #[test]
    fn webhook_body_is_exact() {
        let e = proto::Event {
            id: "evt_1".into(),
            r#type: "order.created".into(),
            tenant: "acme".into(),
            source: String::new(),
            time: "2026-01-01T00:00:00Z".into(),
            data: br#"{"z": 1, "a": [ 2 ]}"#.to_vec(),
        };
        let body = String::from_utf8(webhook_body(&e).unwrap()).unwrap();
        assert_eq!(
            body,
            r#"{"id":"evt_1","type":"order.created","timestamp":"2026-01-01T00:00:00Z","tenant":"acme","data":{"z": 1, "a": [ 2 ]}}"#
        );
        // Strings are escaped as JSON; empty data cannot make a body.
        let odd = proto::Event { source: "s\"\n\u{1}é".into(), time: "t\"\\\u{7}".into(), ..e.clone() };
        let parsed: serde_json::Value = serde_json::from_slice(&webhook_body(&odd).unwrap()).unwrap();
        assert_eq!(parsed["timestamp"], "t\"\\\u{7}");
        assert!(webhook_body(&proto::Event { data: b" ".to_vec(), ..e }).is_err());
    }
}
