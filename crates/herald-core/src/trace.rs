//! W3C trace context on messages: Herald carries `traceparent` from the publisher, through
//! NATS headers, to every webhook request, so one trace spans the whole path.

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

/// Appends `n` random bytes as lowercase hex. Trace and span ids need to be unique, not secret:
/// a per-thread xorshift generator seeded once from the operating system, not a system call
/// per id.
fn push_random_hex(out: &mut String, n: usize) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).expect("the operating system's random source failed");
            u64::from_le_bytes(seed) | 1
        });
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut left = n;
    while left > 0 {
        let word = STATE.with(|s| {
            // xorshift64*
            let mut x = s.get();
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            s.set(x);
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        });
        for byte in word.to_le_bytes().into_iter().take(left.min(8)) {
            out.push(HEX[(byte >> 4) as usize] as char);
            out.push(HEX[(byte & 15) as usize] as char);
        }
        left = left.saturating_sub(8);
    }
}

/// True if `value` is a well-formed version-00 `traceparent`.
pub fn is_valid(value: &str) -> bool {
    let b = value.as_bytes();
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|c| *c != b'0');
    b.len() == 55
        && b.starts_with(b"00-")
        && b[35] == b'-'
        && b[52] == b'-'
        && hex(&b[3..35])
        && hex(&b[36..52])
        && hex(&b[53..55])
        && nonzero(&b[3..35])
        && nonzero(&b[36..52])
}

/// A new sampled trace.
pub fn new_traceparent() -> String {
    let mut t = String::with_capacity(55);
    t.push_str("00-");
    push_random_hex(&mut t, 16);
    t.push('-');
    push_random_hex(&mut t, 8);
    t.push_str("-01");
    t
}

/// A child span of `parent` (same trace, new span id), or a new trace if `parent` is absent or
/// malformed.
pub fn child_of(parent: Option<&str>) -> String {
    match parent {
        Some(p) if is_valid(p) => {
            let mut t = String::with_capacity(55);
            t.push_str(&p[..36]);
            push_random_hex(&mut t, 8);
            t.push_str(&p[52..]);
            t
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
        assert!(is_valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!is_valid("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"));
        assert!(!is_valid("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"), "uppercase");
        assert!(!is_valid("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), "zero trace");
        assert!(!is_valid("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"), "zero span");
        assert!(!is_valid("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), "version");
        assert!(!is_valid("00-4bf92f3577b34da6a3ce929d0e0e4736x00f067aa0ba902b7-01"));
        // Ids differ from call to call.
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_traceparent()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
