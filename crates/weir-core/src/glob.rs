//! Subscription glob patterns over stream names (PROTOCOL.md §6.2): `*`
//! matches exactly one path segment, `**` matches zero or more segments;
//! anything else matches literally.

/// Whether `name` matches `pattern`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = name.split('/').collect();
    match_from(&pat, &segs)
}

fn match_from(pat: &[&str], segs: &[&str]) -> bool {
    // Iterative with memo-free backtracking on `**`; patterns are short.
    match pat.split_first() {
        None => segs.is_empty(),
        Some((&"**", rest)) => (0..=segs.len()).any(|i| match_from(rest, &segs[i..])),
        Some((&p, rest)) => match segs.split_first() {
            Some((&s, srest)) if p == "*" || p == s => match_from(rest, srest),
            _ => false,
        },
    }
}

/// The literal prefix of a pattern (up to its first wildcard segment), used
/// to list candidate streams by prefix instead of scanning all of them.
pub fn literal_prefix(pattern: &str) -> String {
    let mut out = String::new();
    for seg in pattern.split('/') {
        if seg == "*" || seg == "**" {
            break;
        }
        out.push_str(seg);
        out.push('/');
    }
    out
}

/// Maximum pattern length and wildcard count accepted (bounds backtracking).
pub const MAX_PATTERN_LEN: usize = 512;
/// Most `**` segments in one pattern.
pub const MAX_DOUBLE_STARS: usize = 4;

/// Whether a pattern is acceptable.
pub fn valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= MAX_PATTERN_LEN
        && pattern.split('/').all(|s| !s.is_empty())
        && pattern.split('/').filter(|s| *s == "**").count() <= MAX_DOUBLE_STARS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(matches("events/*", "events/abc"));
        assert!(!matches("events/*", "events/a/b"));
        assert!(!matches("events/*", "events"));
        assert!(matches("events/**", "events"));
        assert!(matches("events/**", "events/a/b"));
        assert!(matches("**/x", "a/b/x"));
        assert!(matches("**", "anything/at/all"));
        assert!(matches("a/*/c", "a/b/c"));
        assert!(!matches("a/*/c", "a/b/d"));
        assert_eq!(literal_prefix("events/*"), "events/");
        assert_eq!(literal_prefix("**"), "");
        assert!(valid_pattern("events/*"));
        assert!(!valid_pattern("a//b"));
    }
}
