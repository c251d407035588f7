//! W3C trace context on messages: Herald carries `traceparent` from the publisher, through
//! NATS headers, to every webhook request, so one trace spans the whole path.

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// True if `value` is a well-formed version-00 `traceparent`.
pub fn is_valid(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

/// A new sampled trace.
pub fn new_traceparent() -> String {
    format!("00-{}-{}-01", random_hex(16), random_hex(8))
}

/// A child span of `parent` (same trace, new span id), or a new trace if `parent` is absent or
/// malformed.
pub fn child_of(parent: Option<&str>) -> String {
    match parent {
        Some(p) if is_valid(p) => {
            let mut parts = p.split('-');
            let (_, trace, _, flags) =
                (parts.next(), parts.next().unwrap_or_default(), parts.next(), parts.next().unwrap_or("01"));
            format!("00-{trace}-{}-{flags}", random_hex(8))
        }
        _ => new_traceparent(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents() {
        let t = new_traceparent();
        assert!(is_valid(&t), "{t}");
        let c = child_of(Some(&t));
        assert!(is_valid(&c));
        assert_eq!(c[3..35], t[3..35]);
        assert_ne!(c[36..52], t[36..52]);
        assert!(!is_valid("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"));
        assert!(is_valid(&child_of(Some("garbage"))));
    }
}
