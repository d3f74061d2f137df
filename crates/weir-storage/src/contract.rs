//! The storage contract as executable tests. Every backend runs these
//! against itself (`cargo test` with the `contract-tests` feature), so the
//! memory, embedded-log and JetStream backends cannot drift apart.
//!
//! Each function takes a fresh, empty store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use weir_core::append::{AppendRejection, AppendRequest, Body};
use weir_core::offset::ReadFrom;
use weir_core::producer::ProducerHeaders;
use weir_core::{ContentType, Expiry, StreamName};

use crate::{AppendAck, CreateRequest, ForkRequest, Storage, StorageError, StreamEventKind};

fn name(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn ct(s: &str) -> Option<ContentType> {
    ContentType::parse(s)
}

/// A plain create request.
pub fn create_req(n: &str, content_type: &str, body: &'static [u8]) -> CreateRequest {
    CreateRequest {
        name: name(n),
        content_type: ct(content_type),
        expiry: Expiry::Never,
        closed: false,
        body: if body.is_empty() {
            Body::Empty
        } else if content_type == "application/json" {
            Body::Json(weir_core::json::split_messages(
                &Bytes::from_static(body),
                true,
            ))
        } else {
            Body::Bytes(Bytes::from_static(body))
        },
        fork: None,
    }
}

/// A plain append request.
pub fn bytes_append(data: &[u8]) -> AppendRequest {
    AppendRequest {
        content_type: ct("text/plain"),
        body: Body::Bytes(Bytes::copy_from_slice(data)),
        close: false,
        stream_seq: None,
        producer: None,
    }
}

fn producer(id: &str, epoch: u64, seq: u64) -> Option<ProducerHeaders> {
    Some(ProducerHeaders {
        id: id.into(),
        epoch,
        seq,
    })
}

async fn read_all(s: &dyn Storage, n: &str) -> Vec<u8> {
    let c = s.read(&name(n), ReadFrom::Start, usize::MAX).await.unwrap();
    c.pieces.concat()
}

/// Create, idempotent re-create, mismatches, delete and re-create.
pub async fn create_and_delete(s: Arc<dyn Storage>) {
    let out = s
        .create(create_req("a", "text/plain", b"hi"))
        .await
        .unwrap();
    assert!(out.created);
    assert_eq!(out.info.tail.pos, 2);
    let again = s.create(create_req("a", "TEXT/PLAIN", b"")).await.unwrap();
    assert!(!again.created, "same config is idempotent");
    assert!(matches!(
        s.create(create_req("a", "application/json", b"")).await,
        Err(StorageError::ConfigMismatch(_))
    ));
    s.delete(&name("a")).await.unwrap();
    assert_eq!(s.head(&name("a")).await, Err(StorageError::NotFound));
    assert_eq!(s.delete(&name("a")).await, Err(StorageError::NotFound));
    let re = s
        .create(create_req("a", "text/plain", b"new"))
        .await
        .unwrap();
    assert!(re.created);
    assert_ne!(re.info.id, out.info.id, "a new incarnation");
    assert_eq!(read_all(&*s, "a").await, b"new");
}

/// Appends, offsets, reads from every returned offset.
pub async fn append_and_read(s: Arc<dyn Storage>) {
    s.create(create_req("r", "text/plain", b"")).await.unwrap();
    let mut offsets = vec![s.head(&name("r")).await.unwrap().tail];
    let mut all = Vec::new();
    for i in 0..20u8 {
        let data = vec![b'a' + i; usize::from(i) + 1];
        let out = s.append(&name("r"), bytes_append(&data)).await.unwrap();
        assert!(matches!(out.result, Ok(AppendAck::Appended { .. })));
        assert!(
            out.tail > *offsets.last().unwrap(),
            "offsets strictly increase"
        );
        offsets.push(out.tail);
        all.extend_from_slice(&data);
    }
    assert_eq!(read_all(&*s, "r").await, all);
    for (i, o) in offsets.iter().enumerate() {
        let c = s
            .read(&name("r"), ReadFrom::At(*o), usize::MAX)
            .await
            .unwrap();
        let expect: usize = (0..i).map(|k| k + 1).sum();
        assert_eq!(c.pieces.concat(), all[expect..].to_vec());
        assert!(c.up_to_date);
    }
    // Small budgets paginate without losing or repeating bytes.
    let mut pos = ReadFrom::Start;
    let mut got = Vec::new();
    loop {
        let c = s.read(&name("r"), pos, 7).await.unwrap();
        got.extend_from_slice(&c.pieces.concat());
        pos = ReadFrom::At(c.next);
        if c.up_to_date {
            break;
        }
    }
    assert_eq!(got, all);
    let now = s.read(&name("r"), ReadFrom::Now, usize::MAX).await.unwrap();
    assert!(now.pieces.is_empty() && now.up_to_date);
    assert_eq!(now.next, *offsets.last().unwrap());
    let beyond = weir_core::Offset::new(offsets.last().unwrap().id, 10_000);
    assert_eq!(
        s.read(&name("r"), ReadFrom::At(beyond), 10).await.err(),
        Some(StorageError::OffsetInvalid)
    );
}

/// Producer dedup, fencing and closure.
pub async fn producers_and_closure(s: Arc<dyn Storage>) {
    s.create(create_req("p", "text/plain", b"")).await.unwrap();
    let mut req = bytes_append(b"one");
    req.producer = producer("w", 0, 0);
    let first = s.append(&name("p"), req.clone()).await.unwrap();
    assert!(matches!(first.result, Ok(AppendAck::Appended { .. })));
    let dup = s.append(&name("p"), req.clone()).await.unwrap();
    assert!(matches!(dup.result, Ok(AppendAck::Duplicate { .. })));
    assert_eq!(dup.tail, first.tail, "a duplicate writes nothing");
    let mut gap = bytes_append(b"x");
    gap.producer = producer("w", 0, 5);
    let out = s.append(&name("p"), gap).await.unwrap();
    assert_eq!(
        out.result,
        Err(AppendRejection::SeqGap {
            expected: 1,
            received: 5
        })
    );
    let mut bump = bytes_append(b"two");
    bump.producer = producer("w", 1, 0);
    assert!(s.append(&name("p"), bump).await.unwrap().result.is_ok());
    let mut zombie = bytes_append(b"z");
    zombie.producer = producer("w", 0, 1);
    assert_eq!(
        s.append(&name("p"), zombie).await.unwrap().result,
        Err(AppendRejection::StaleEpoch { current_epoch: 1 })
    );
    let mut close = bytes_append(b"end");
    close.close = true;
    close.producer = producer("w", 1, 1);
    let closed = s.append(&name("p"), close.clone()).await.unwrap();
    assert!(closed.closed);
    let retry = s.append(&name("p"), close).await.unwrap();
    assert!(matches!(retry.result, Ok(AppendAck::Duplicate { .. })));
    assert_eq!(
        s.append(&name("p"), bytes_append(b"late"))
            .await
            .unwrap()
            .result,
        Err(AppendRejection::Closed)
    );
    assert_eq!(read_all(&*s, "p").await, b"onetwoend");
    let c = s.read(&name("p"), ReadFrom::Now, 10).await.unwrap();
    assert!(c.at_eof());
}

/// Forks: stitching, independence, soft delete and cascading cleanup.
pub async fn forks(s: Arc<dyn Storage>) {
    s.create(create_req("src", "text/plain", b"hello"))
        .await
        .unwrap();
    let mid = s
        .append(&name("src"), bytes_append(b" world"))
        .await
        .unwrap()
        .tail;
    let f = s
        .create(CreateRequest {
            fork: Some(ForkRequest {
                source: name("src"),
                offset: None,
                sub_offset: 0,
            }),
            ..create_req("fork", "text/plain", b"")
        })
        .await
        .unwrap();
    assert_eq!(f.info.tail, mid, "a fork's tail is its fork offset");
    s.append(&name("src"), bytes_append(b" src-only"))
        .await
        .unwrap();
    s.append(&name("fork"), bytes_append(b"!")).await.unwrap();
    assert_eq!(read_all(&*s, "fork").await, b"hello world!");
    // Sub-offset fork inside the first chunk.
    let zero = weir_core::Offset::new(0, 0);
    s.create(CreateRequest {
        fork: Some(ForkRequest {
            source: name("src"),
            offset: Some(zero),
            sub_offset: 3,
        }),
        ..create_req("sub", "text/plain", b"p")
    })
    .await
    .unwrap();
    assert_eq!(read_all(&*s, "sub").await, b"help");
    // Chained fork of the fork, at a point inside inherited data.
    let c = s
        .create(CreateRequest {
            fork: Some(ForkRequest {
                source: name("fork"),
                offset: Some(weir_core::Offset::new(0, 0)),
                sub_offset: 5,
            }),
            ..create_req("chain", "text/plain", b"")
        })
        .await
        .unwrap();
    assert_eq!(c.info.tail.pos, 5);
    assert_eq!(read_all(&*s, "chain").await, b"hello");
    // Soft delete: the source answers Gone, its forks still read.
    s.delete(&name("src")).await.unwrap();
    assert_eq!(s.head(&name("src")).await, Err(StorageError::Gone));
    assert_eq!(s.delete(&name("src")).await, Err(StorageError::Gone));
    assert!(matches!(
        s.create(create_req("src", "text/plain", b"")).await,
        Err(StorageError::PathBlocked)
    ));
    assert!(matches!(
        s.create(CreateRequest {
            fork: Some(ForkRequest {
                source: name("src"),
                offset: None,
                sub_offset: 0
            }),
            ..create_req("f2", "text/plain", b"")
        })
        .await,
        Err(StorageError::SourceGone)
    ));
    assert_eq!(read_all(&*s, "fork").await, b"hello world!");
    // Deleting every fork frees the chain.
    s.delete(&name("chain")).await.unwrap();
    s.delete(&name("sub")).await.unwrap();
    s.delete(&name("fork")).await.unwrap();
    let mut freed = false;
    for _ in 0..50 {
        if s.head(&name("src")).await == Err(StorageError::NotFound) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "cascading cleanup frees a soft-deleted source");
    s.create(create_req("src", "text/plain", b""))
        .await
        .unwrap();
}

/// JSON streams keep message boundaries; sub-offsets count messages.
pub async fn json_messages(s: Arc<dyn Storage>) {
    s.create(create_req("j", "application/json", b"[1, {\"a\": 2}, [3]]"))
        .await
        .unwrap();
    let c = s
        .read(&name("j"), ReadFrom::Start, usize::MAX)
        .await
        .unwrap();
    let msgs: Vec<&[u8]> = c.pieces.iter().map(|p| &p[..]).collect();
    assert_eq!(msgs, vec![&b"1"[..], b"{\"a\": 2}", b"[3]"]);
    // A budget smaller than a message still returns one whole message.
    let c = s.read(&name("j"), ReadFrom::Start, 1).await.unwrap();
    assert_eq!(c.pieces.len(), 1);
    let c2 = s.read(&name("j"), ReadFrom::At(c.next), 1).await.unwrap();
    assert_eq!(&c2.pieces[0][..], b"{\"a\": 2}");
    let f = s
        .create(CreateRequest {
            content_type: None,
            fork: Some(ForkRequest {
                source: name("j"),
                offset: Some(weir_core::Offset::new(0, 0)),
                sub_offset: 2,
            }),
            ..create_req("jf", "application/json", b"")
        })
        .await
        .unwrap();
    assert!(
        f.info.content_type.is_json(),
        "forks inherit the content type"
    );
    let c = s
        .read(&name("jf"), ReadFrom::Start, usize::MAX)
        .await
        .unwrap();
    assert_eq!(c.pieces.len(), 2);
    assert!(matches!(
        s.create(CreateRequest {
            fork: Some(ForkRequest {
                source: name("j"),
                offset: Some(weir_core::Offset::new(0, 0)),
                sub_offset: 4,
            }),
            ..create_req("jbad", "application/json", b"")
        })
        .await,
        Err(StorageError::Fork(_))
    ));
}

/// The kinds of the next `n` events about stream `stream` on a feed.
async fn kinds_of(
    feed: &mut tokio::sync::broadcast::Receiver<crate::StreamEvent>,
    stream: &str,
    n: usize,
) -> Vec<StreamEventKind> {
    let mut kinds = Vec::new();
    while kinds.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(5), feed.recv())
            .await
            .unwrap()
            .unwrap();
        if e.name == name(stream) {
            kinds.push(e.kind);
        }
    }
    kinds
}

/// Watches tick on commits and report deletion; the event feed reports
/// creation, appends, closure and deletion; the lifecycle feed only creation
/// and deletion.
pub async fn notifications(s: Arc<dyn Storage>) {
    let mut events = s.events();
    let mut lifecycle = s.lifecycle_events();
    s.create(create_req("w", "text/plain", b"")).await.unwrap();
    let mut watch = s.watch(&name("w")).await.unwrap();
    let appended = s.append(&name("w"), bytes_append(b"x")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.borrow().pos, appended.tail.pos);
    let mut close = bytes_append(b"");
    close.body = Body::Empty;
    close.close = true;
    s.append(&name("w"), close).await.unwrap();
    s.delete(&name("w")).await.unwrap();
    assert_eq!(
        kinds_of(&mut events, "w", 4).await,
        vec![
            StreamEventKind::Created,
            StreamEventKind::Appended,
            StreamEventKind::Closed,
            StreamEventKind::Deleted
        ]
    );
    assert_eq!(
        kinds_of(&mut lifecycle, "w", 2).await,
        vec![StreamEventKind::Created, StreamEventKind::Deleted]
    );
    assert!(
        lifecycle.try_recv().is_err(),
        "no appends on the lifecycle feed"
    );
    tokio::time::timeout(Duration::from_secs(5), async {
        while !watch.borrow().gone {
            if watch.changed().await.is_err() {
                break;
            }
        }
    })
    .await
    .unwrap();
}

/// Prefix listing with pagination, and the versioned key/value space.
pub async fn listing_and_kv(s: Arc<dyn Storage>) {
    for n in ["t/a", "t/b", "t/c/d", "u/x", "t0"] {
        s.create(create_req(n, "text/plain", b"")).await.unwrap();
    }
    let page1 = s.list("t/", None, 2).await.unwrap();
    let names: Vec<&str> = page1.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["t/a", "t/b"]);
    let page2 = s.list("t/", Some("t/b"), 10).await.unwrap();
    let names: Vec<&str> = page2.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["t/c/d"]);
    assert_eq!(s.list("", None, 100).await.unwrap().len(), 5);

    assert_eq!(s.kv_get("k").await.unwrap(), None);
    let v1 = s.kv_put("k", Bytes::from_static(b"1"), None).await.unwrap();
    assert_eq!(
        s.kv_put("k", Bytes::from_static(b"x"), None).await,
        Err(StorageError::VersionConflict)
    );
    let v2 = s
        .kv_put("k", Bytes::from_static(b"2"), Some(v1))
        .await
        .unwrap();
    assert!(v2 > v1);
    assert_eq!(
        s.kv_put("k", Bytes::from_static(b"x"), Some(v1)).await,
        Err(StorageError::VersionConflict)
    );
    assert_eq!(
        s.kv_get("k").await.unwrap(),
        Some((Bytes::from_static(b"2"), v2))
    );
    s.kv_put("k2", Bytes::from_static(b"z"), None)
        .await
        .unwrap();
    assert_eq!(
        s.kv_list("k").await.unwrap(),
        vec!["k".to_owned(), "k2".to_owned()]
    );
    s.kv_delete("k").await.unwrap();
    assert_eq!(s.kv_get("k").await.unwrap(), None);
}

/// Expired streams vanish and their names can be reused.
pub async fn expiry(s: Arc<dyn Storage>) {
    let mut req = create_req("e", "text/plain", b"");
    req.expiry = Expiry::Ttl { secs: 1 };
    s.create(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.head(&name("e")).await, Err(StorageError::NotFound));
    assert!(
        s.create(create_req("e", "text/plain", b""))
            .await
            .unwrap()
            .created
    );
}

/// Seeded random appends (plain and producer), forks and paginated reads
/// checked against a model: every byte at every offset, forever.
pub async fn random_model(s: Arc<dyn Storage>, seed: u64) {
    let mut x = seed | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    s.create(create_req("m", "text/plain", b"")).await.unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut offsets = vec![(s.head(&name("m")).await.unwrap().tail, 0usize)];
    let mut seq = 0;
    for round in 0..300 {
        match rnd(4) {
            0 | 1 => {
                let len = 1 + rnd(40) as usize;
                let data: Vec<u8> = (0..len).map(|_| rnd(256) as u8).collect();
                let out = s.append(&name("m"), bytes_append(&data)).await.unwrap();
                assert!(out.result.is_ok());
                model.extend_from_slice(&data);
                offsets.push((out.tail, model.len()));
            }
            2 => {
                // A producer append, sometimes retried.
                let data = vec![b'p'; 1 + rnd(5) as usize];
                let mut req = bytes_append(&data);
                req.producer = producer("rp", 0, seq);
                let out = s.append(&name("m"), req.clone()).await.unwrap();
                assert!(matches!(out.result, Ok(AppendAck::Appended { .. })));
                model.extend_from_slice(&data);
                offsets.push((out.tail, model.len()));
                if rnd(2) == 0 {
                    let again = s.append(&name("m"), req).await.unwrap();
                    assert!(matches!(again.result, Ok(AppendAck::Duplicate { .. })));
                    assert_eq!(again.tail, out.tail);
                }
                seq += 1;
            }
            _ => {
                let (o, at) = offsets[rnd(offsets.len() as u64) as usize];
                let budget = 1 + rnd(64) as usize;
                let c = s.read(&name("m"), ReadFrom::At(o), budget).await.unwrap();
                let got = c.pieces.concat();
                assert_eq!(
                    &got[..],
                    &model[at..at + got.len()],
                    "round {round}: bytes at offset"
                );
                assert!(!got.is_empty() || at == model.len());
                assert_eq!(c.up_to_date, at + got.len() == model.len());
            }
        }
    }
    assert_eq!(read_all(&*s, "m").await, model);
}

/// A watcher that subscribes while a commit is being published either sees
/// the new tail or is woken for it — never left waiting. Publishing skips
/// the wake-up when nobody watches; this races subscriptions against the
/// log's committer thread (the memory backend publishes on the appending
/// task, where there is no race to lose). Every round starts with no
/// watcher, so the publish takes the no-watcher path.
pub async fn watch_races_publish(s: Arc<dyn Storage>) {
    s.create(create_req("race", "text/plain", b""))
        .await
        .unwrap();
    for round in 0..400u32 {
        let before = s.watch(&name("race")).await.unwrap().borrow().pos;
        let writer = {
            let s = s.clone();
            tokio::spawn(async move { s.append(&name("race"), bytes_append(b"x")).await })
        };
        for _ in 0..round % 4 {
            tokio::task::yield_now().await;
        }
        let mut w = s.watch(&name("race")).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                // Alternate the two ways readers look at the tail: the
                // watch's own value, and the stream's state.
                let now = if round % 2 == 0 {
                    w.borrow_and_update().pos
                } else {
                    w.borrow_and_update();
                    let info = s.head(&name("race")).await.unwrap();
                    info.tail.pos
                };
                if now > before {
                    break;
                }
                w.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("round {round}: watcher left waiting"));
        writer.await.unwrap().unwrap();
    }
}

/// Runs the whole contract, each case on a fresh store.
pub async fn run_all<F: Fn() -> Arc<dyn Storage>>(fresh: F) {
    create_and_delete(fresh()).await;
    append_and_read(fresh()).await;
    producers_and_closure(fresh()).await;
    forks(fresh()).await;
    json_messages(fresh()).await;
    notifications(fresh()).await;
    watch_races_publish(fresh()).await;
    listing_and_kv(fresh()).await;
    expiry(fresh()).await;
    for seed in [1, 7, 42, 1234] {
        random_model(fresh(), seed).await;
    }
}
