//! Identifiers that validate on construction, so a bad id cannot travel far.

use std::fmt;

/// Why an identifier was refused; the message names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub String);

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// An event id: 1–128 chars of `[A-Za-z0-9_:-]`. It is the JetStream `Nats-Msg-Id` and the
    /// `webhook-id`; `.` is excluded because it delimits signed content and subject tokens.
    EventId
);
id_type!(
    /// `sub_` + ULID.
    SubscriptionId
);
id_type!(
    /// A tenant: 1–64 chars of `[A-Za-z0-9_-]`.
    TenantId
);
id_type!(
    /// A dot-separated event type such as `order.created`: tokens of `[A-Za-z0-9_-]`, at most
    /// 16 tokens and 255 chars.
    EventType
);

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl EventId {
    /// Validates a client-supplied event id.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > 128 {
            return Err(InvalidId(format!("event id must be 1 to 128 characters long, got {}", s.len())));
        }
        // Every byte of a non-ASCII character is refused, so the first refused byte starts one.
        if let Some(at) = s.bytes().position(|b| !(is_word(b) || b == b':')) {
            let c = s[at..].chars().next().unwrap_or_default();
            return Err(InvalidId(format!(
                "event id {s:?} contains {c:?}; only letters, digits, '_', '-' and ':' are allowed"
            )));
        }
        Ok(Self(s.to_owned()))
    }

    /// A fresh `evt_` + ULID.
    pub fn generate() -> Self {
        Self(format!("evt_{}", ulid::Ulid::new()))
    }

    /// A stable id for an event that arrived without one, derived from where JetStream stored
    /// it, so that redeliveries of the same stream message map to the same id.
    pub fn derived(stream_sequence: u64, stored_at_ms: u64) -> Self {
        Self(format!("evt_{}", ulid::Ulid::from_parts(stored_at_ms, stream_sequence as u128)))
    }

    /// When an `evt_` + ULID id was minted (Herald's ids, generated or derived, and ULIDs that
    /// publishers mint alike), to the millisecond; `None` for any other id.
    pub fn minted_at(id: &str) -> Option<time::OffsetDateTime> {
        let ulid = ulid::Ulid::from_string(id.strip_prefix("evt_")?).ok()?;
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ulid.timestamp_ms()) * 1_000_000).ok()
    }
}

impl SubscriptionId {
    /// Validates `sub_` + ULID.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        match s.strip_prefix("sub_") {
            Some(rest) if ulid::Ulid::from_string(rest).is_ok() => Ok(Self(s.to_owned())),
            _ => Err(InvalidId(format!("subscription id {s:?} is not `sub_` followed by a ULID"))),
        }
    }

    /// A fresh `sub_` + ULID.
    pub fn generate() -> Self {
        Self(format!("sub_{}", ulid::Ulid::new()))
    }
}

impl TenantId {
    /// The tenant used when none is given.
    pub const DEFAULT: &'static str = "default";

    /// Validates a tenant id.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > 64 || !s.bytes().all(is_word) {
            return Err(InvalidId(format!("tenant {s:?} must be 1 to 64 characters of letters, digits, '_' and '-'")));
        }
        Ok(Self(s.to_owned()))
    }

    /// The `default` tenant.
    pub fn default_tenant() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl EventType {
    /// Validates an event type.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > 255 {
            return Err(InvalidId(format!("event type must be 1 to 255 characters long, got {}", s.len())));
        }
        // One pass: every byte a word byte or a dot, no empty token.
        let (mut tokens, mut token_len, mut well_formed) = (1, 0, true);
        for b in s.bytes() {
            if b == b'.' {
                well_formed &= token_len > 0;
                tokens += 1;
                token_len = 0;
            } else {
                well_formed &= is_word(b);
                token_len += 1;
            }
        }
        well_formed &= token_len > 0;
        if tokens > 16 {
            return Err(InvalidId(format!("event type {s:?} has {tokens} tokens; at most 16 are allowed")));
        }
        if !well_formed {
            return Err(InvalidId(format!(
                "event type {s:?} must be dot-separated tokens of letters, digits, '_' and '-' (e.g. order.created)"
            )));
        }
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_event_ids_tell_when_they_were_minted() {
        let derived = EventId::derived(7, 1_700_000_000_123).into_string();
        assert_eq!(EventId::minted_at(&derived).map(|t| t.unix_timestamp_nanos()), Some(1_700_000_000_123_000_000));
        let fresh = EventId::generate().into_string();
        let age = time::OffsetDateTime::now_utc() - EventId::minted_at(&fresh).unwrap();
        assert!(age >= time::Duration::ZERO && age < time::Duration::seconds(5), "{age}");
        assert_eq!(EventId::minted_at("order-42"), None);
        assert_eq!(EventId::minted_at("evt_not-a-ulid"), None);
    }

    #[test]
    fn event_ids() {
        for ok in ["a", "evt_01HX", "order:42", "A-b_c:1", &"x".repeat(128)] {
            EventId::parse(ok).unwrap();
        }
        for bad in ["", "a.b", "a b", "é", "a/b", "a*", &"x".repeat(129)] {
            assert!(EventId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(EventId::parse("abé").unwrap_err().0.contains("'é'"), "names the character");
        let g = EventId::generate();
        assert!(g.as_str().starts_with("evt_"));
        EventId::parse(g.as_str()).unwrap();
        assert_eq!(EventId::derived(7, 1000), EventId::derived(7, 1000));
        assert_ne!(EventId::derived(7, 1000), EventId::derived(8, 1000));
    }

    #[test]
    fn subscription_ids() {
        let g = SubscriptionId::generate();
        assert_eq!(SubscriptionId::parse(g.as_str()).unwrap(), g);
        for bad in ["", "sub_", "sub_xyz", "01HX", "evt_01ARZ3NDEKTSV4RRFFQ69G5FAV"] {
            assert!(SubscriptionId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tenants() {
        TenantId::parse("acme-1_x").unwrap();
        for bad in ["", "a.b", "a*", "a>", "a b", &"t".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_types() {
        EventType::parse("order.created").unwrap();
        EventType::parse("a").unwrap();
        EventType::parse(&vec!["a"; 16].join(".")).unwrap();
        for bad in ["", "order..created", ".a", "a.", "a.*", "a.>", "a b", &vec!["a"; 17].join("."), &"a".repeat(256)] {
            assert!(EventType::parse(bad).is_err(), "{bad:?}");
        }
    }
}
