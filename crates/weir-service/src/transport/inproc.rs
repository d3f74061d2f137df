//! An in-process broker with NATS semantics: `*`/`>` wildcards, queue
//! groups (one member per group gets each message), no-responders on
//! requests nobody listens to, `max_payload`, bounded subscription buffers
//! (a full buffer drops the message and counts a slow consumer, as NATS
//! does). Services and clients on one `InProcess` talk without a server, so
//! unit tests need no infrastructure and run under tokio's paused clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{HeaderMap, StatusCode, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::RwLock;
use tokio::sync::mpsc;

use super::{Message, Subscription, SubscriptionImpl, Transport, TransportError, check_size};

const SUB_CAPACITY: usize = 65_536;

struct Entry {
    id: u64,
    tokens: Vec<String>,
    queue: Option<String>,
    tx: mpsc::Sender<Message>,
}

#[derive(Default)]
struct Router {
    subs: RwLock<Vec<Arc<Entry>>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
}

/// The in-process transport. Clones share one broker.
#[derive(Clone)]
pub struct InProcess {
    router: Arc<Router>,
    max_payload: usize,
    leases: Arc<crate::timer::MemoryLeases>,
    inbox_prefix: Arc<str>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess")
            .field("subscriptions", &self.router.subs.read().len())
            .finish_non_exhaustive()
    }
}

impl Default for InProcess {
    fn default() -> Self {
        InProcess::new()
    }
}

impl InProcess {
    /// A broker with NATS's default `max_payload` of 1 MiB.
    pub fn new() -> InProcess {
        InProcess::with_max_payload(1024 * 1024)
    }

    pub fn with_max_payload(max_payload: usize) -> InProcess {
        InProcess {
            router: Arc::new(Router::default()),
            max_payload,
            leases: Arc::new(crate::timer::MemoryLeases::default()),
            inbox_prefix: "_INBOX".into(),
        }
    }

    /// Subscriptions currently registered (for tests).
    pub fn subscription_count(&self) -> usize {
        self.router.subs.read().len()
    }

    fn deliver(&self, msg: Message) -> usize {
        let tokens: Vec<&str> = msg.subject.as_str().split('.').collect();
        let subs = self.router.subs.read();
        let mut plain: Vec<&Arc<Entry>> = Vec::new();
        let mut groups: HashMap<&str, Vec<&Arc<Entry>>> = HashMap::new();
        for e in subs.iter() {
            if matches(&e.tokens, &tokens) {
                match &e.queue {
                    Some(q) => groups.entry(q.as_str()).or_default().push(e),
                    None => plain.push(e),
                }
            }
        }
        let mut targets = plain;
        for (_, members) in groups {
            let i = self.router.round_robin.fetch_add(1, Ordering::Relaxed) % members.len();
            targets.push(members[i]);
        }
        let n = targets.len();
        for e in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) = e.tx.try_send(msg.clone()) {
                tracing::warn!(subject = %msg.subject, "in-process slow consumer: message dropped");
                metrics::counter!(crate::metrics::SLOW_CONSUMERS).increment(1);
            }
        }
        n
    }

    fn remove(router: &Router, id: u64) {
        router.subs.write().retain(|e| e.id != id);
    }
}

/// Whether the subject tokens match the pattern tokens (`*`, `>`).
pub fn matches(pattern: &[String], subject: &[&str]) -> bool {
    let mut i = 0;
    for p in pattern {
        if p == ">" {
            return subject.len() > i;
        }
        match subject.get(i) {
            Some(s) if p == "*" || p == s => i += 1,
            _ => return false,
        }
    }
    i == subject.len()
}

fn message(
    subject: &str,
    reply: Option<String>,
    headers: Option<HeaderMap>,
    payload: Bytes,
) -> Message {
    let length = payload.len();
    Message {
        subject: Subject::from(subject),
        reply: reply.map(Subject::from),
        payload,
        headers,
        status: None,
        description: None,
        length,
    }
}

struct InprocSub {
    rx: mpsc::Receiver<Message>,
    router: std::sync::Weak<Router>,
    id: u64,
}

impl futures::Stream for InprocSub {
    type Item = Message;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl SubscriptionImpl for InprocSub {
    fn drain(&mut self) -> BoxFuture<'_, ()> {
        if let Some(r) = self.router.upgrade() {
            InProcess::remove(&r, self.id);
        }
        Box::pin(async {})
    }
}

impl Drop for InprocSub {
    fn drop(&mut self) {
        if let Some(r) = self.router.upgrade() {
            InProcess::remove(&r, self.id);
        }
    }
}

#[async_trait::async_trait]
impl Transport for InProcess {
    async fn publish(
        &self,
        subject: String,
        reply: Option<String>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<(), TransportError> {
        check_size(headers.as_ref(), &payload, self.max_payload)?;
        let has_reply = reply.clone();
        let delivered = self.deliver(message(&subject, reply, headers, payload));
        // NATS answers a request nobody listens to with a 503 status message.
        if delivered == 0
            && let Some(r) = has_reply
        {
            let mut m = message(&r, None, None, Bytes::new());
            m.status = Some(StatusCode::NO_RESPONDERS);
            self.deliver(m);
        }
        Ok(())
    }

    async fn request(
        &self,
        subject: String,
        headers: Option<HeaderMap>,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Message, TransportError> {
        use futures::StreamExt;
        check_size(headers.as_ref(), &payload, self.max_payload)?;
        let inbox = self.new_inbox();
        let mut sub = self.subscribe(inbox.clone(), None).await?;
        self.publish(subject, Some(inbox), headers, payload).await?;
        match tokio::time::timeout(timeout, sub.next()).await {
            Ok(Some(m)) if m.status == Some(StatusCode::NO_RESPONDERS) => {
                Err(TransportError::NoResponders)
            }
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(TransportError::Connection("closed".into())),
            Err(_) => Err(TransportError::TimedOut),
        }
    }

    async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, TransportError> {
        let (tx, rx) = mpsc::channel(SUB_CAPACITY);
        let id = self.router.next_id.fetch_add(1, Ordering::Relaxed);
        self.router.subs.write().push(Arc::new(Entry {
            id,
            tokens: subject.split('.').map(str::to_owned).collect(),
            queue,
            tx,
        }));
        Ok(Subscription::new(InprocSub {
            rx,
            router: Arc::downgrade(&self.router),
            id,
        }))
    }

    fn new_inbox(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "{}.{}",
            self.inbox_prefix,
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn max_payload(&self) -> usize {
        self.max_payload
    }

    async fn flush(&self) -> Result<(), TransportError> {
        Ok(())
    }

    fn leases(&self) -> Option<Arc<dyn crate::timer::LeaseStore>> {
        Some(self.leases.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str) -> Vec<String> {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn wildcards() {
        let s = |x: &'static str| x.split('.').collect::<Vec<_>>();
        assert!(matches(&t("a.b"), &s("a.b")));
        assert!(matches(&t("a.*"), &s("a.b")));
        assert!(!matches(&t("a.*"), &s("a.b.c")));
        assert!(matches(&t("a.>"), &s("a.b.c")));
        assert!(!matches(&t("a.>"), &s("a")));
        assert!(!matches(&t("a.b"), &s("a")));
    }
}
