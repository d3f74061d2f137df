//! NATS subject patterns: validation and "does this pattern cover that one".
//!
//! Authorization compares *patterns*, not subjects: a client asks for
//! `orders.*` and the rule says `orders.>`. The request is allowed only if
//! every subject the requested pattern can match is matched by the rule.

/// Why a subject pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("the subject is empty")]
    Empty,
    #[error("the subject is longer than {0} bytes")]
    TooLong(usize),
    #[error("the subject has an empty token")]
    EmptyToken,
    #[error("the subject contains whitespace or a control character")]
    BadCharacter,
    #[error("`>` may only be the last token")]
    MisplacedTail,
    #[error("a wildcard must be a whole token")]
    PartialWildcard,
}

/// Longest pattern accepted from a client.
pub const MAX_SUBJECT_LEN: usize = 256;

/// Checks that `s` is a well-formed subject pattern.
pub fn validate(s: &str) -> Result<(), SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong(MAX_SUBJECT_LEN));
    }
    let mut tokens = s.split('.').peekable();
    while let Some(t) = tokens.next() {
        if t.is_empty() {
            return Err(SubjectError::EmptyToken);
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SubjectError::BadCharacter);
        }
        if t == ">" && tokens.peek().is_some() {
            return Err(SubjectError::MisplacedTail);
        }
        if t.len() > 1 && (t.contains('*') || t.contains('>')) {
            return Err(SubjectError::PartialWildcard);
        }
    }
    Ok(())
}

/// Whether every subject matched by `requested` is matched by `rule`
/// (both valid patterns).
pub fn covers(rule: &str, requested: &str) -> bool {
    let mut r = rule.split('.');
    let mut q = requested.split('.');
    loop {
        match (r.next(), q.next()) {
            (None, None) => return true,
            // `>` needs at least one more token, which `q` has.
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) => {
                if t == ">" {
                    return false;
                }
            }
            (Some(a), Some(b)) => {
                if a != b {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Whether the concrete `subject` is matched by `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    covers(pattern, subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(validate("orders.created").is_ok());
        assert!(validate("orders.*.x").is_ok());
        assert!(validate("orders.>").is_ok());
        assert_eq!(validate(""), Err(SubjectError::Empty));
        assert_eq!(validate("a..b"), Err(SubjectError::EmptyToken));
        assert_eq!(validate("a.>.b"), Err(SubjectError::MisplacedTail));
        assert_eq!(validate("a.b*"), Err(SubjectError::PartialWildcard));
        assert_eq!(validate("a b"), Err(SubjectError::BadCharacter));
    }

    #[test]
    fn coverage() {
        assert!(covers("orders.>", "orders.created"));
        assert!(covers("orders.>", "orders.*"));
        assert!(covers("orders.>", "orders.>"));
        assert!(!covers("orders.>", "orders"));
        assert!(covers("orders.*", "orders.created"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.*", "orders.a.b"));
        assert!(!covers("orders.created", "orders.*"));
        assert!(!covers("orders.created", ">"));
        assert!(covers(">", "anything.at.all"));
        assert!(!covers("users.>", "orders.x"));
    }
}
