//! Event-type patterns: NATS-style wildcards over dot-separated types. `*` matches exactly one
//! token, `>` (last token only) matches one or more remaining tokens.

use crate::ids::InvalidId;

/// A validated type pattern such as `order.*` or `invoice.>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypePattern(String);

impl TypePattern {
    /// Validates a pattern: tokens of `[A-Za-z0-9_-]`, or `*`, or a final `>`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.is_empty() || s.len() > 255 {
            return Err(InvalidId(format!("event type pattern must be 1 to 255 characters long, got {}", s.len())));
        }
        let tokens: Vec<&str> = s.split('.').collect();
        if tokens.len() > 16 {
            return Err(InvalidId(format!("event type pattern {s:?} has more than 16 tokens")));
        }
        for (i, t) in tokens.iter().enumerate() {
            let ok = match *t {
                "*" => true,
                ">" => i == tokens.len() - 1,
                t => !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            };
            if !ok {
                return Err(InvalidId(format!(
                    "event type pattern {s:?} is invalid: use dot-separated tokens, `*` for one token, `>` (last) for the rest"
                )));
            }
        }
        Ok(Self(s.to_owned()))
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True if `event_type` (already validated) is selected by this pattern.
    pub fn matches(&self, event_type: &str) -> bool {
        matches(&self.0, event_type)
    }
}

/// True if `event_type` is selected by `pattern` (both assumed valid).
pub fn matches(pattern: &str, event_type: &str) -> bool {
    matches_bytes(pattern.as_bytes(), event_type.as_bytes())
}

/// [`matches`] over bytes: fan-out runs it for every subscription of an event's tenant, so it
/// compares bytes rather than searching for characters.
pub(crate) fn matches_bytes(pattern: &[u8], event_type: &[u8]) -> bool {
    if pattern == event_type {
        return true;
    }
    let mut types = event_type.split(|&b| b == b'.');
    for p in pattern.split(|&b| b == b'.') {
        match (p, types.next()) {
            (b">", Some(_)) => return true,
            (b"*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    types.next().is_none()
}

/// True if `pattern` has a wildcard (`*` or `>`); one without selects its own text only.
pub(crate) fn has_wildcard(pattern: &str) -> bool {
    pattern.bytes().any(|b| b == b'*' || b == b'>')
}

/// True if every subject that `narrow` selects is also selected by `wide` (both NATS subjects
/// or patterns, dot-separated, `*` one token, `>` the rest).
pub fn covers(wide: &str, narrow: &str) -> bool {
    let mut narrow_tokens = narrow.split('.');
    for w in wide.split('.') {
        match (w, narrow_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(n)) if n != ">" => {}
            (w, Some(n)) if w == n => {}
            _ => return false,
        }
    }
    narrow_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_and_wildcards() {
        let cases = [
            ("order.created", "order.created", true),
            ("order.created", "order.updated", false),
            ("order.created", "order.created.v2", false),
            ("order.*", "order.created", true),
            ("order.*", "order", false),
            ("order.*", "order.created.v2", false),
            ("*.created", "invoice.created", true),
            ("order.>", "order.created", true),
            ("order.>", "order.created.v2", true),
            ("order.>", "order", false),
            (">", "anything.at.all", true),
            (">", "x", true),
            ("*", "x", true),
            ("*", "x.y", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(TypePattern::parse(p).unwrap().matches(t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn invalid_patterns() {
        for bad in ["", "a..b", "a.>.b", ">.a", "a.b*", "a b", "a.", "a.**"] {
            assert!(TypePattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn covering_patterns() {
        let cases = [
            ("a.>", "a.b", true),
            ("a.>", "a.*.c", true),
            ("a.>", "a.>", true),
            ("a.>", "a", false),
            (">", "a.>", true),
            ("a.*", "a.b", true),
            ("a.*", "a.*", true),
            ("a.*", "a.>", false),
            ("a.*", "a.b.c", false),
            ("a.b", "a.*", false),
            ("a.b", "a.b", true),
            ("a.*.c", "a.*.*", false),
            ("a.*.*", "a.*.c", true),
        ];
        for (wide, narrow, want) in cases {
            assert_eq!(covers(wide, narrow), want, "{wide} covers {narrow}");
        }
    }
}
