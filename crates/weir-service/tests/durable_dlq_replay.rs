#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A bug dead-letters an event; after the "fix" a replay from the DLQ is
//! handled (same event id, fresh broker dedupe id so the duplicate window
//! does not swallow it), and the dead letter is gone.

mod durable_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use durable_support::{dead_letters, env, eventually};
use parking_lot::Mutex;
use weir_service::durable::{
    DeadLetters, DurableListener, DurableOptions, DurablePublisher, Family, REPLAYED_FROM,
};
use weir_service::{ErrorCode, Problem, ServiceBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_dead_letter_is_handled_after_the_fix() {
    let env = env().await;
    let js = env.nats.jetstream().clone();
    let family = Family::new("payments");
    family.ensure(&js).await.unwrap();
    let fixed = Arc::new(AtomicBool::new(false));
    let handled: Arc<Mutex<Vec<(String, String, bool)>>> = Arc::default();
    let (f, h) = (fixed.clone(), handled.clone());
    let _svc = ServiceBuilder::new("ledger", "1.0.0")
        .durable(
            DurableListener::new("book", family.clone(), "payments.>")
                .options(DurableOptions::default().max_deliver(2))
                .handler(move |ev| {
                    let (f, h) = (f.clone(), h.clone());
                    async move {
                        if !f.load(Ordering::SeqCst) {
                            return Err(Problem::new(ErrorCode::JsonInvalid, "amount missing"));
                        }
                        let replayed = ev
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(REPLAYED_FROM))
                            .is_some();
                        h.lock()
                            .push((ev.event_id.clone(), ev.subject.clone(), replayed));
                        Ok(())
                    }
                }),
        )
        .start(env.transport.clone())
        .await
        .unwrap();

    DurablePublisher::new(js.clone())
        .publish_json(
            "payments.received",
            "pay-7",
            &serde_json::json!({"amount": 5}),
        )
        .await
        .unwrap();
    eventually("the dead letter", || async {
        dead_letters(&js).await.len() == 1
    })
    .await;
    assert!(handled.lock().is_empty());

    fixed.store(true, Ordering::SeqCst);
    let (seq, _) = dead_letters(&js).await.remove(0);
    let replayed = DeadLetters::new(js.clone()).replay(seq).await.unwrap();
    assert!(
        !replayed.duplicate,
        "a replay inside the duplicate window must not be dropped"
    );
    assert_eq!(replayed.event_id, "pay-7");
    eventually("the replay handled", || async {
        !handled.lock().is_empty()
    })
    .await;
    assert_eq!(
        handled.lock().clone(),
        vec![("pay-7".to_owned(), "payments.received".to_owned(), true)]
    );
    assert!(dead_letters(&js).await.is_empty());
    assert!(matches!(
        DeadLetters::new(js.clone()).get(seq).await,
        Err(weir_service::durable::DurableError::NotFound(_))
    ));
}
