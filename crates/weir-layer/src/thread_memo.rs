//! Per-thread memos of the last value a hot path computed.
//!
//! A steady client sends request after request that needs the same
//! derived values (its rate-limit key hash, its `RateLimit` header value,
//! its route's metric handles), and a tokio worker serves many of them in
//! a row, so remembering the last one per thread turns a computation into
//! a compare. Each memo is a `thread_local!` `RefCell<Option<T>>` read and
//! written through these two functions: a memo that cannot be reached —
//! the thread is being torn down, or the memo is borrowed further up the
//! stack (being updated, for a read; at all, for an update) — is simply a
//! miss, and an update to it is dropped.

use std::cell::RefCell;
use std::thread::LocalKey;

/// A per-thread memo (declare it with `thread_local!`, starting at `None`).
pub(crate) type Memo<T> = LocalKey<RefCell<Option<T>>>;

/// What `f` finds in this thread's memo; `None` when it is empty or
/// cannot be reached.
pub(crate) fn read<T: 'static, R>(
    memo: &'static Memo<T>,
    f: impl FnOnce(&T) -> Option<R>,
) -> Option<R> {
    memo.try_with(|m| m.try_borrow().ok()?.as_ref().and_then(f))
        .ok()
        .flatten()
}

/// Changes this thread's memo with `f`, unless it cannot be reached.
pub(crate) fn update<T: 'static>(memo: &'static Memo<T>, f: impl FnOnce(&mut Option<T>)) {
    let _ = memo.try_with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            f(&mut m);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static LAST: RefCell<Option<u32>> = const { RefCell::new(None) };
    }

    #[test]
    fn read_update_and_reentry() {
        assert_eq!(read(&LAST, |v| Some(*v)), None);
        update(&LAST, |m| *m = Some(7));
        assert_eq!(read(&LAST, |v| Some(*v)), Some(7));
        assert_eq!(read(&LAST, |v| (*v == 8).then_some(())), None);
        // Re-entered while read: another read sees the value, an update
        // is dropped.
        let inner = read(&LAST, |_| {
            update(&LAST, |m| *m = Some(9));
            Some(read(&LAST, |v| Some(*v)))
        });
        assert_eq!(inner, Some(Some(7)));
        assert_eq!(read(&LAST, |v| Some(*v)), Some(7));
        // Re-entered while updated: a read misses.
        update(&LAST, |_| assert_eq!(read(&LAST, |v| Some(*v)), None));
    }
}
