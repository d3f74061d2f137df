//! The zeroer writes zeros ahead of the log's write position on a real
//! file system while appends of every size race it: every record must read
//! back, and recover after a restart, byte for byte — zeros never land on
//! a reserved position. (The simulated disk never runs the zeroer; this is
//! the test of its coordination with the committer.)
#![allow(clippy::unwrap_used)]

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_storage::log::engine::{Engine, EngineOptions, SyncMode};
use weir_storage::log::frame::NO_PREV;
use weir_storage::log::fs::{Fs, LogFile, RealFs};

const SEG: u64 = 3 << 20;
const KIND: u8 = 1;

fn opts(zero_ahead: bool) -> EngineOptions {
    EngineOptions {
        segment_size: SEG,
        sync: SyncMode::Data,
        zero_ahead,
    }
}

/// A payload that names its writer and sequence number in every byte run,
/// so a record overwritten by zeros or by another record shows.
fn payload(thread: u64, i: u64) -> Vec<u8> {
    // Mostly small records, every 16th a large one (up to 192 KiB): large
    // ones make the writer outrun the zeroer and meet its busy range.
    let len = if i.is_multiple_of(16) {
        64 * 1024 + ((thread * 7919 + i * 104_729) % (128 * 1024))
    } else {
        1 + ((thread * 31 + i * 17) % 600)
    } as usize;
    let tag = (thread << 32 | i).to_le_bytes();
    (0..len).map(|k| tag[k % 8] ^ (k as u8)).collect()
}

/// The real file system, except that a write of a whole chunk of zeros
/// (the zeroer's) stalls before it happens: the committer then meets the
/// zeroer's busy range on most large appends, and a committer that did not
/// wait for it would have its records overwritten by the late zeros.
struct SlowZeros(RealFs);
struct SlowZerosFile(Arc<dyn LogFile>);

impl Fs for SlowZeros {
    fn list(&self) -> io::Result<Vec<String>> {
        self.0.list()
    }
    fn open(&self, name: &str, create: Option<u64>) -> io::Result<Arc<dyn LogFile>> {
        Ok(Arc::new(SlowZerosFile(self.0.open(name, create)?)))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.remove(name)
    }
    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        self.0.write_atomic(name, data)
    }
    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.0.read(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.0.sync_dir()
    }
    fn free_bytes(&self) -> io::Result<u64> {
        self.0.free_bytes()
    }
    fn zero_fill_pays(&self) -> bool {
        true
    }
}

impl LogFile for SlowZerosFile {
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if buf.len() >= 64 * 1024 && buf.iter().all(|b| *b == 0) {
            std::thread::sleep(Duration::from_millis(15));
        }
        self.0.write_all_at(buf, off)
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.0.size()
    }
    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        self.0.punch(off, len)
    }
}

#[test]
fn zeros_never_land_on_records_and_everything_recovers() {
    let dir = tempfile::tempdir().unwrap();
    race(Arc::new(RealFs::new(dir.path()).unwrap()));
}

#[test]
fn a_slow_zeroer_holds_the_committer_back() {
    let dir = tempfile::tempdir().unwrap();
    race(Arc::new(SlowZeros(RealFs::new(dir.path()).unwrap())));
}

fn race(fs: Arc<dyn Fs>) {
    let (engine, _) = Engine::open(fs.clone(), opts(true), 0, |_| {}).unwrap();
    assert!(
        engine.zeroed_ahead().is_some(),
        "the zeroer runs on a real file system with syncs on"
    );

    let threads: u64 = 4;
    let per_thread: u64 = 400;
    let written: Vec<(u64, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let engine = engine.clone();
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in 0..per_thread {
                        let (lsn, waiter) =
                            engine.submit(KIND, t, NO_PREV, &payload(t, i)).unwrap();
                        // Every 4th append waits for its commit; the rest
                        // pile up so batches hold many records.
                        if i.is_multiple_of(4) {
                            waiter.blocking_recv().unwrap().unwrap();
                        }
                        out.push((lsn, t, i));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let end = engine.submitted_lsn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.durable_lsn() < end {
        assert!(Instant::now() < deadline, "log did not become durable");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        engine.segments().unwrap().len() >= 3,
        "the run crosses segment boundaries"
    );
    for &(lsn, t, i) in &written {
        let (h, bytes) = engine.read(lsn).unwrap();
        assert_eq!(h.key, t);
        assert_eq!(&bytes[..], &payload(t, i)[..], "record {t}/{i} at {lsn}");
    }

    // Appends after a quiet moment: the zeroer has caught up and is ahead.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, w) = engine.submit(KIND, 9, NO_PREV, b"tick").unwrap();
        w.blocking_recv().unwrap().unwrap();
        if engine.zeroed_ahead().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the zeroer never got ahead");
        std::thread::sleep(Duration::from_millis(20));
    }

    engine.close();
    drop(engine);
    let mut recovered = std::collections::HashMap::new();
    let (engine, report) = Engine::open(fs, opts(true), 0, |r| {
        recovered.insert(r.lsn, (r.key, r.payload));
    })
    .unwrap();
    assert!(
        report.torn.is_none(),
        "clean shutdown, no torn tail: {report:?}"
    );
    for &(lsn, t, i) in &written {
        let (key, bytes) = recovered.get(&lsn).unwrap();
        assert_eq!(*key, t);
        assert_eq!(&bytes[..], &payload(t, i)[..], "recovered {t}/{i} at {lsn}");
    }
    engine.close();
}

#[test]
fn zero_ahead_is_off_when_asked_or_without_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(RealFs::new(dir.path()).unwrap());
    let (engine, _) = Engine::open(fs.clone(), opts(false), 0, |_| {}).unwrap();
    assert_eq!(engine.zeroed_ahead(), None);
    engine.close();
    drop(engine);
    let no_sync = EngineOptions {
        sync: SyncMode::None,
        ..opts(true)
    };
    let (engine, _) = Engine::open(fs, no_sync, 0, |_| {}).unwrap();
    assert_eq!(engine.zeroed_ahead(), None);
    engine.close();
}
