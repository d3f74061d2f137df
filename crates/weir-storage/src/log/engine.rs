//! The log engine: framed records in preallocated segment files, one
//! committer thread doing group commit, recovery that truncates a torn tail.
//!
//! Positions (LSNs) are byte positions in the concatenation of all
//! segments: `segment * segment_size + offset`. A position is assigned when
//! a record is *submitted* (under a short mutex), so callers know where a
//! record will live before it is written — which is what lets each record
//! point back at the previous record of its stream.
//!
//! Group commit: submitters push frames to a channel in position order; the
//! committer drains everything queued, writes it with one positioned write
//! per touched segment, issues one `fdatasync` per touched segment, then
//! advances the durable position, publishes the new durable tail of every
//! stream in the batch (waking its readers from this thread, once per
//! stream per batch) and only then completes the waiters. No timer: a
//! batch forms from whatever arrived while the previous sync ran.
//!
//! Failure policy: after any write or sync error the engine is *poisoned* —
//! every later submission fails — because a retried fsync can report
//! success for data the kernel already dropped. ENOSPC is reported as
//! [`LogError::DiskFull`] (and poisons too: the batch may be half written).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

use bytes::Bytes;
use parking_lot::RwLock;
use tokio::sync::oneshot;

use super::frame::{self, HEADER, KIND_SEGMENT_END, NO_PREV, Slot};
use super::fs::{Fs, LogFile};
use crate::backend::OnDurable;
use crate::lock::{Condvar, Mutex};

/// Name of the file recording the on-disk format version.
pub const FORMAT_FILE: &str = "FORMAT";
/// Written when a write or sync fails: the last durable position.
pub const WRITE_FAILED_FILE: &str = "WRITE_FAILED";
/// On-disk format of a log that compaction never touched.
pub const FORMAT: &str = "weir-log 1\n";
/// On-disk format once compaction has written relocate records and may have
/// removed segments: a build that only knows version 1 must refuse it.
pub const FORMAT_V2: &str = "weir-log 2\n";

/// Engine failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("I/O error: {0}")]
    Io(String),
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("the log stopped accepting writes after an earlier I/O failure: {0}")]
    Poisoned(String),
    #[error("record of {0} bytes exceeds the segment size")]
    TooLarge(usize),
    #[error("corrupt record at {lsn}: {reason}")]
    Corrupt { lsn: u64, reason: String },
    #[error("unsupported on-disk format {0:?}; this build reads {FORMAT:?} and {FORMAT_V2:?}")]
    UnsupportedFormat(String),
    #[error("log segments are missing: {0}")]
    MissingSegments(String),
    #[error("the log is closed")]
    Closed,
}

impl From<std::io::Error> for LogError {
    fn from(e: std::io::Error) -> LogError {
        if e.kind() == std::io::ErrorKind::StorageFull {
            LogError::DiskFull(e.to_string())
        } else {
            LogError::Io(e.to_string())
        }
    }
}

/// How hard the committer syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `fdatasync` every batch before acknowledging it (durable; default).
    #[default]
    Data,
    /// No syncs: acknowledged data survives a process crash but not power
    /// loss. For benchmarks and throwaway data.
    None,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub segment_size: u64,
    pub sync: SyncMode,
    /// Write zeros ahead of the write position, off the commit path, so a
    /// commit's `fdatasync` overwrites blocks that are already written
    /// (see [`ZeroAhead`]). Only where the file layer says it pays
    /// ([`Fs::zero_fill_pays`]) and syncs are on.
    pub zero_ahead: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            segment_size: 128 * 1024 * 1024,
            sync: SyncMode::Data,
            zero_ahead: true,
        }
    }
}

/// A record read during recovery.
#[derive(Debug)]
pub struct Recovered {
    pub lsn: u64,
    pub kind: u8,
    pub key: u64,
    pub prev: u64,
    pub payload: Bytes,
}

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub records: u64,
    pub segments: u64,
    /// Where the valid log ended, and why it ended there if not cleanly.
    pub end_lsn: u64,
    pub torn: Option<String>,
    /// Segments after the end that were discarded (never acknowledged).
    pub dropped_segments: u64,
}

/// What a submitted frame's waiter receives once its batch is durable:
/// the frame's buffer, handed back so that it is freed by the thread that
/// allocated it (an appending task's worker). Freed by the committer
/// instead, every buffer went through the allocator's cross-thread free
/// path, and the worker paid again to collect those frees.
pub type Committed = Result<Vec<u8>, LogError>;

/// The receiving end of a submitted frame ([`Committed`]).
pub type CommitWaiter = oneshot::Receiver<Committed>;

/// Waits until a submitted frame's batch is durable. The frame's buffer
/// comes back with the completion and is freed here, on the waiting
/// task's thread (see [`Committed`]).
pub async fn committed(waiter: CommitWaiter) -> Result<(), LogError> {
    match waiter.await {
        Ok(Ok(_frame)) => Ok(()),
        Ok(Err(e)) => Err(e),
        // The committer drops a waiter only when it stops.
        Err(_) => Err(LogError::Closed),
    }
}

struct Job {
    seg: u64,
    off: u64,
    frame: Vec<u8>,
    end: u64,
    done: Option<oneshot::Sender<Committed>>,
    /// Published by the committer once the batch is durable.
    publish: Option<OnDurable>,
}

struct Reserve {
    seg: u64,
    off: u64,
    tx: Option<mpsc::Sender<Job>>,
    zero: ZeroAhead,
}

/// Zero-filling ahead of the write position.
///
/// Segments are preallocated with `fallocate`, which on ext4 and XFS
/// leaves *unwritten* extents: the first write into a block converts it,
/// and the commit's `fdatasync` must then also write that extent change.
/// Measured on this project's machine (ext4, virtio disk), `fdatasync`
/// after a 7.5 KB write took 0.13 ms into fallocated space and 0.084 ms
/// over blocks that already held zeros — and the metadata writes cost CPU
/// on every commit. So a background thread (the *zeroer*) writes zeros a
/// few MiB ahead of the position submissions have reserved, in 1 MiB
/// chunks, and syncs them through its own file descriptor; commits then
/// only overwrite. The cost is that each segment's bytes are written twice
/// to the device — once as zeros, in large sequential writes off the
/// commit path — which `docs/storage.md` states.
///
/// The one rule that keeps data safe: zeros never land on a reserved
/// position. The zeroer claims a range only at or past `Reserve::off`,
/// under the reserve lock, and marks it `busy` while it writes; the
/// committer, before writing a batch that reaches into a busy range (its
/// records were reserved after the claim), waits until the zeroer is done.
/// Positions reserved after a claim are the only ones that can overlap it,
/// so no later claim can overlap a batch the committer already holds.
#[derive(Debug)]
struct ZeroAhead {
    /// Whether the zeroer runs at all.
    on: bool,
    /// The segment `done` refers to.
    seg: u64,
    /// Zeros are written and synced in `seg` from the current write
    /// position up to here.
    done: u64,
    /// The range of `seg` the zeroer is writing now.
    busy: Option<(u64, u64, u64)>,
    /// In-segment offset at which the next submission asks the zeroer for
    /// more (`u64::MAX`: it has been asked, or needs nothing).
    ask_at: u64,
}

/// How far ahead of the write position the zeroer keeps zeros, in what
/// steps, and how much of that lead may be used before it is asked again.
const ZERO_AHEAD: u64 = 4 << 20;
const ZERO_CHUNK: u64 = 1 << 20;
const ZERO_LOW_WATER: u64 = 3 << 20;

/// Where submissions post "more zeros, please" without touching the
/// engine's hot state: the zeroer sleeps on it holding no engine
/// reference, so dropping the engine is never delayed by it.
#[derive(Default)]
struct ZeroMailbox {
    state: Mutex<ZeroRequest>,
    cv: Condvar,
}

#[derive(Default)]
struct ZeroRequest {
    asked: bool,
    stop: bool,
}

impl ZeroMailbox {
    fn post(&self, stop: bool) {
        let mut g = self.state.lock();
        g.asked = true;
        g.stop |= stop;
        self.cv.notify_one();
    }
}

/// The engine.
pub struct Engine {
    fs: Arc<dyn Fs>,
    opts: EngineOptions,
    reserve: Mutex<Reserve>,
    files: RwLock<HashMap<u64, Arc<dyn LogFile>>>,
    durable: AtomicU64,
    poison: Mutex<Option<String>>,
    poisoned: AtomicBool,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    reclaimed: AtomicU64,
    /// Set (under the reserve lock) while the zeroer writes a claimed
    /// range: the committer checks it before each write, cheaply.
    zero_busy: AtomicBool,
    /// The committer waits here (with the reserve lock) for a busy range
    /// to be released.
    zero_released: Condvar,
    zero_mailbox: Arc<ZeroMailbox>,
}

/// The result of scanning a log.
struct Scan {
    files: HashMap<u64, Arc<dyn LogFile>>,
    segments: Vec<u64>,
    /// Where the valid log ends inside a segment (`None`: after the last
    /// segment's end record).
    end: Option<(u64, u64)>,
    report: RecoveryReport,
}

/// Reads (or, when `create` gives a size, creates) the FORMAT file and
/// returns the segment size the log was created with. The size is fixed at
/// creation: positions depend on it.
fn read_format(fs: &dyn Fs, create: Option<u64>) -> Result<u64, LogError> {
    match fs.read(FORMAT_FILE) {
        Ok(v) => {
            let text = String::from_utf8_lossy(&v).into_owned();
            let mut lines = text.lines();
            let version = lines.next();
            if version != Some(FORMAT.trim_end()) && version != Some(FORMAT_V2.trim_end()) {
                return Err(LogError::UnsupportedFormat(text));
            }
            lines
                .find_map(|l| l.strip_prefix("segment_size "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .filter(|n| *n >= 4096)
                .ok_or(LogError::UnsupportedFormat(text.clone()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create {
            Some(size) => {
                fs.write_atomic(
                    FORMAT_FILE,
                    format!("{FORMAT}segment_size {size}\n").as_bytes(),
                )?;
                Ok(size)
            }
            None => Err(LogError::Io("no log here (FORMAT file missing)".into())),
        },
        Err(e) => Err(e.into()),
    }
}

/// The segment size a log was created with (from its FORMAT file).
pub fn segment_size_of(fs: &dyn Fs) -> Result<u64, LogError> {
    read_format(fs, None)
}

/// Scans every segment, verifying both CRCs of each record and passing the
/// ones at or after `from` to `replay`. Segments from `needed` on must all
/// be present (compaction removes only segments before the older
/// checkpoint). Read-only.
fn scan(
    fs: &dyn Fs,
    size: u64,
    from: u64,
    needed: u64,
    limit: Option<u64>,
    mut replay: impl FnMut(Recovered),
) -> Result<Scan, LogError> {
    let segments = list_segments(fs)?;
    let (from_seg, from_off) = (from / size, from % size);
    // Compaction removes only segments wholly below the older checkpoint;
    // everything from the replay start on must be present and contiguous.
    let need_seg = needed / size;
    let needed: Vec<u64> = segments
        .iter()
        .copied()
        .filter(|s| *s >= need_seg)
        .collect();
    if let Some(&first) = needed.first()
        && (first != need_seg || needed.windows(2).any(|w| w[1] != w[0] + 1))
    {
        return Err(LogError::MissingSegments(if need_seg == 0 && first > 0 {
            format!(
                "segments 0..{first} were removed by compaction and no readable checkpoint \
                 covers them (restore the checkpoint files from a backup)"
            )
        } else {
            format!("replay starts in segment {need_seg} but the log holds segments {needed:?}")
        }));
    }
    let mut report = RecoveryReport::default();
    let mut files = HashMap::new();
    let mut end = None;
    for &seg in &segments {
        let f = match fs.open(&seg_name(seg), None) {
            Ok(f) => f,
            // Removed by a running server's compaction since the listing
            // (`weir storage verify` next to a server): not needed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && seg < need_seg => continue,
            Err(e) => return Err(e.into()),
        };
        files.insert(seg, f.clone());
        report.segments += 1;
        if seg < from_seg {
            // Covered by the checkpoint: not read again.
            continue;
        }
        let len = f.size()?.min(size);
        let mut off = if seg == from_seg { from_off } else { 0 };
        let stop = loop {
            if off + HEADER as u64 > len {
                break Some("segment ended without an end marker");
            }
            if limit.is_some_and(|l| seg * size + off >= l) {
                break Some("last durable position before a failed write");
            }
            let mut h = [0u8; HEADER];
            f.read_exact_at(&mut h, off)?;
            match frame::decode_header(&h) {
                Slot::Zero => break None,
                Slot::Corrupt(why) => break Some(why),
                Slot::Valid(h) if h.kind == KIND_SEGMENT_END => {
                    off = len;
                    break None;
                }
                Slot::Valid(h) => {
                    let flen = frame::frame_len(h.len as usize) as u64;
                    if off + flen > len {
                        break Some("record runs past the segment end");
                    }
                    let mut payload = vec![0u8; h.len as usize];
                    f.read_exact_at(&mut payload, off + HEADER as u64)?;
                    if !frame::payload_ok(&h, &payload) {
                        break Some("payload checksum mismatch");
                    }
                    let lsn = seg * size + off;
                    if lsn >= from {
                        replay(Recovered {
                            lsn,
                            kind: h.kind,
                            key: h.key,
                            prev: h.prev,
                            payload: Bytes::from(payload),
                        });
                    }
                    report.records += 1;
                    off += flen;
                }
            }
        };
        if stop.is_some() || off < len {
            if let Some(why) = stop {
                report.torn = Some(format!("{why} at segment {seg} offset {off}"));
            }
            end = Some((seg, off));
            report.end_lsn = seg * size + off;
            break;
        }
    }
    Ok(Scan {
        files,
        segments,
        end,
        report,
    })
}

/// Checks a log without changing it: every record's CRCs in every segment
/// present, in order, passed to `each`. Segments from `needed` on must all
/// be present (0 without checkpoints; the checkpoint's position once
/// compaction has removed segments). Safe while a server is writing (it
/// sees a prefix).
pub fn verify(
    fs: &dyn Fs,
    needed: u64,
    each: impl FnMut(Recovered),
) -> Result<RecoveryReport, LogError> {
    let size = read_format(fs, None)?;
    let limit = fs
        .read(WRITE_FAILED_FILE)
        .ok()
        .and_then(|v| String::from_utf8_lossy(&v).trim().parse::<u64>().ok());
    let s = scan(fs, size, 0, needed, limit, each)?;
    let mut report = s.report;
    if let Some((seg, _)) = s.end {
        report.dropped_segments = s.segments.iter().filter(|x| **x > seg).count() as u64;
    }
    Ok(report)
}

/// Copies a log (possibly being written) into an empty directory: FORMAT,
/// the checkpoints, then every segment in order. The copy is a consistent
/// prefix of the log — a record still being written when it was copied is
/// cut off by the copy's recovery, like a torn tail. Checkpoints are copied
/// first, so the segments copied after them reach past their positions;
/// segments compaction removes meanwhile lie below the newest copied
/// checkpoint and are not needed.
pub fn backup(src: &dyn Fs, dest: &dyn Fs) -> Result<u64, LogError> {
    if !dest.list()?.is_empty() {
        return Err(LogError::Io("the backup directory is not empty".into()));
    }
    let format = src.read(FORMAT_FILE)?;
    let size = read_format(src, None)?;
    let mut copied = 0u64;
    let mut newest_ckpt = None;
    let mut ckpts: Vec<u64> = src
        .list()?
        .iter()
        .filter_map(|n| super::checkpoint::parse_name(n))
        .collect();
    ckpts.sort_unstable();
    for lsn in ckpts {
        let name = super::checkpoint::name(lsn);
        match src.read(&name) {
            Ok(body) => {
                dest.write_atomic(&name, &body)?;
                copied += body.len() as u64;
                newest_ckpt = Some(lsn);
            }
            // Rotated away while we copied: a newer one exists.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    for seg in list_segments(src)? {
        let from = match src.open(&seg_name(seg), None) {
            Ok(f) => f,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && newest_ckpt.is_some_and(|c| (seg + 1) * size <= c) =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let to = dest.open(&seg_name(seg), Some(size))?;
        let len = from.size()?.min(size);
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            from.read_exact_at(&mut buf[..n], off)?;
            to.write_all_at(&buf[..n], off)?;
            off += n as u64;
        }
        to.sync_data()?;
        copied += len;
    }
    dest.write_atomic(FORMAT_FILE, &format)?;
    dest.sync_dir()?;
    Ok(copied)
}

fn seg_name(seg: u64) -> String {
    format!("wal-{seg:020}.log")
}

/// The segment numbers present in `fs`, in order.
pub fn list_segments(fs: &dyn Fs) -> Result<Vec<u64>, LogError> {
    let mut segments: Vec<u64> = fs.list()?.iter().filter_map(|n| parse_seg(n)).collect();
    segments.sort_unstable();
    Ok(segments)
}

fn parse_seg(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

impl Engine {
    /// Opens (or creates) the log in `fs`, replaying every record with
    /// position ≥ `from` into `replay`, and truncating a torn tail.
    pub fn open(
        fs: Arc<dyn Fs>,
        opts: EngineOptions,
        from: u64,
        replay: impl FnMut(Recovered),
    ) -> Result<(Arc<Engine>, RecoveryReport), LogError> {
        let size = read_format(&*fs, Some(opts.segment_size))?;
        let mut opts = opts;
        opts.segment_size = size;
        // After a failed write or sync, the pages of the failed batch may
        // be "clean" in the page cache without being on disk: a restart
        // without a reboot would read them back as valid. The marker holds
        // the last durable position; nothing after it is trusted.
        let limit = match fs.read(WRITE_FAILED_FILE) {
            Ok(v) => String::from_utf8_lossy(&v).trim().parse::<u64>().ok(),
            Err(_) => None,
        };
        let mut scan = scan(&*fs, size, from, from, limit, replay)?;
        let mut files = std::mem::take(&mut scan.files);
        let mut report = scan.report;
        let (next_seg, end_lsn) = match scan.end {
            Some((seg, off)) => {
                // Segments after the end hold only records whose batch never
                // completed its sync: never acknowledged.
                for later in scan.segments.iter().filter(|s| **s > seg) {
                    files.remove(later);
                    fs.remove(&seg_name(*later))?;
                    report.dropped_segments += 1;
                }
                if report.dropped_segments > 0 {
                    fs.sync_dir()?;
                }
                // New writes start in a fresh segment; an end record at the
                // cut makes sure nothing after it is ever read again.
                if off + HEADER as u64 <= size
                    && let Some(f) = files.get(&seg)
                {
                    f.write_all_at(&frame::encode(KIND_SEGMENT_END, 0, NO_PREV, &[]), off)?;
                    f.sync_data()?;
                    // Give the unused rest of the segment back to the disk.
                    let rest = off + HEADER as u64;
                    let _ = f.punch(rest, size.saturating_sub(rest));
                }
                (seg + 1, seg * size + off)
            }
            None => {
                let last = scan.segments.last().map_or(0, |s| s + 1);
                (last, last * size)
            }
        };
        report.end_lsn = end_lsn;
        // Records replayed after a crash of the process may still be only
        // in the page cache: make them durable before anything is written
        // after them, or a later power loss could open a hole in the log.
        for (seg, f) in &files {
            if *seg >= from / size {
                f.sync_data()?;
            }
        }
        if limit.is_some() {
            fs.remove(WRITE_FAILED_FILE)?;
            fs.sync_dir()?;
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let zero_on = opts.zero_ahead && opts.sync == SyncMode::Data && fs.zero_fill_pays();
        let engine = Arc::new(Engine {
            fs,
            opts,
            reserve: Mutex::new(Reserve {
                seg: next_seg,
                off: 0,
                tx: Some(tx),
                zero: ZeroAhead {
                    on: zero_on,
                    seg: next_seg,
                    done: 0,
                    busy: None,
                    // The first append asks: an engine never written to
                    // zeroes nothing.
                    ask_at: if zero_on { 0 } else { u64::MAX },
                },
            }),
            files: RwLock::new(files),
            durable: AtomicU64::new(next_seg * size),
            poison: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            committer: Mutex::new(None),
            reclaimed: AtomicU64::new(0),
            zero_busy: AtomicBool::new(false),
            zero_released: Condvar::new(),
            zero_mailbox: Arc::new(ZeroMailbox::default()),
        });
        let weak = Arc::downgrade(&engine);
        let handle = std::thread::Builder::new()
            .name("weir-log-commit".into())
            .spawn(move || committer(weak, rx))
            .map_err(LogError::from)?;
        *engine.committer.lock() = Some(handle);
        if zero_on {
            let weak = Arc::downgrade(&engine);
            let mailbox = engine.zero_mailbox.clone();
            std::thread::Builder::new()
                .name("weir-log-zero".into())
                .spawn(move || zeroer(&weak, &mailbox))
                .map_err(LogError::from)?;
        }
        Ok((engine, report))
    }

    /// Queues a record. Returns its position and a receiver that resolves
    /// once it is durable. Records are written in submission order.
    pub fn submit(
        &self,
        kind: u8,
        key: u64,
        prev: u64,
        payload: &[u8],
    ) -> Result<(u64, CommitWaiter), LogError> {
        self.submit_frame(frame::encode(kind, key, prev, payload), None)
    }

    /// Queues an encoded frame (see [`frame::encode`]); once its batch is
    /// durable the committer publishes `publish` (before completing the
    /// returned receiver), so the stream's readers wake straight from the
    /// committer thread.
    pub fn submit_frame(
        &self,
        frame: Vec<u8>,
        publish: Option<OnDurable>,
    ) -> Result<(u64, CommitWaiter), LogError> {
        let size = self.opts.segment_size;
        if frame.len() as u64 + 2 * HEADER as u64 > size {
            return Err(LogError::TooLarge(frame.len()));
        }
        let (done_tx, done_rx) = oneshot::channel();
        let mut r = self.reserve.lock();
        if self.poisoned.load(Ordering::Acquire) {
            return Err(LogError::Poisoned(
                self.poison.lock().clone().unwrap_or_default(),
            ));
        }
        let tx = r.tx.clone().ok_or(LogError::Closed)?;
        if r.off + frame.len() as u64 + HEADER as u64 > size {
            // Close this segment with an end marker; continue in the next.
            let end_marker = frame::encode(KIND_SEGMENT_END, 0, NO_PREV, &[]);
            tx.send(Job {
                seg: r.seg,
                off: r.off,
                end: r.seg * size + r.off + end_marker.len() as u64,
                frame: end_marker,
                done: None,
                publish: None,
            })
            .map_err(|_| LogError::Closed)?;
            r.seg += 1;
            r.off = 0;
            if r.zero.on {
                r.zero.ask_at = 0;
            }
        }
        let lsn = r.seg * size + r.off;
        let len = frame.len() as u64;
        tx.send(Job {
            seg: r.seg,
            off: r.off,
            end: lsn + len,
            frame,
            done: Some(done_tx),
            publish,
        })
        .map_err(|_| LogError::Closed)?;
        r.off += len;
        if r.off >= r.zero.ask_at {
            r.zero.ask_at = u64::MAX;
            self.zero_mailbox.post(false);
        }
        Ok((lsn, done_rx))
    }

    /// Reads a durable record's header and payload, verifying both CRCs.
    pub fn read(&self, lsn: u64) -> Result<(frame::Header, Bytes), LogError> {
        let size = self.opts.segment_size;
        let (seg, off) = (lsn / size, lsn % size);
        let f = self.file(seg)?;
        let mut h = [0u8; HEADER];
        f.read_exact_at(&mut h, off)?;
        let header = match frame::decode_header(&h) {
            Slot::Valid(h) => h,
            Slot::Zero => {
                return Err(LogError::Corrupt {
                    lsn,
                    reason: "no record here".into(),
                });
            }
            Slot::Corrupt(why) => {
                return Err(LogError::Corrupt {
                    lsn,
                    reason: why.into(),
                });
            }
        };
        let mut payload = vec![0u8; header.len as usize];
        f.read_exact_at(&mut payload, off + HEADER as u64)?;
        if !frame::payload_ok(&header, &payload) {
            return Err(LogError::Corrupt {
                lsn,
                reason: "payload checksum mismatch".into(),
            });
        }
        Ok((header, Bytes::from(payload)))
    }

    fn file(&self, seg: u64) -> Result<Arc<dyn LogFile>, LogError> {
        let existing = self.files.read().get(&seg).cloned();
        if let Some(f) = existing {
            return Ok(f);
        }
        let f = self.fs.open(&seg_name(seg), None)?;
        self.files.write().insert(seg, f.clone());
        Ok(f)
    }

    /// The position the next submitted record will get (everything
    /// submitted so far lies below it).
    pub fn submitted_lsn(&self) -> u64 {
        let r = self.reserve.lock();
        r.seg * self.opts.segment_size + r.off
    }

    /// Waits (blocking the calling thread briefly) until `lsn` is durable or
    /// the log fails.
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), LogError> {
        loop {
            if self.durable_lsn() >= lsn {
                return Ok(());
            }
            if let Some(p) = self.poisoned() {
                return Err(LogError::Poisoned(p));
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Blocks the calling (blocking-pool) thread until the record at `lsn`
    /// has been written — it is durable, or the log failed. Records are
    /// written in position order, so a durable position past `lsn` means the
    /// whole record at `lsn` is on disk.
    pub fn wait_written(&self, lsn: u64) -> Result<(), LogError> {
        while self.durable_lsn() <= lsn {
            if let Some(p) = self.poisoned() {
                return Err(LogError::Poisoned(p));
            }
            if self.reserve.lock().tx.is_none() {
                return Err(LogError::Closed);
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        Ok(())
    }

    /// The file layer (for checkpoints).
    pub fn fs(&self) -> &Arc<dyn Fs> {
        &self.fs
    }

    /// Everything below this position is durable.
    pub fn durable_lsn(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The error that stopped writes, if any.
    pub fn poisoned(&self) -> Option<String> {
        self.poison.lock().clone()
    }

    /// Free bytes on the log's device.
    pub fn free_bytes(&self) -> Result<u64, LogError> {
        Ok(self.fs.free_bytes()?)
    }

    /// Segment size in bytes.
    pub fn segment_size(&self) -> u64 {
        self.opts.segment_size
    }

    /// The segment numbers on disk, in order.
    pub fn segments(&self) -> Result<Vec<u64>, LogError> {
        list_segments(&*self.fs)
    }

    /// How many bytes past the reserved write position the zeroer has
    /// written zeros over in the current segment (`None`: it does not run).
    pub fn zeroed_ahead(&self) -> Option<u64> {
        let r = self.reserve.lock();
        r.zero.on.then(|| {
            if r.zero.seg == r.seg {
                r.zero.done.saturating_sub(r.off)
            } else {
                0
            }
        })
    }

    /// The segment new records go to; every segment below it is sealed.
    pub fn current_segment(&self) -> u64 {
        self.reserve.lock().seg
    }

    /// Marks the log as compacted (FORMAT version 2) before the first
    /// relocate record is written, so an older build refuses the directory
    /// instead of misreading it.
    pub fn upgrade_format(&self) -> Result<(), LogError> {
        let text = String::from_utf8_lossy(&self.fs.read(FORMAT_FILE)?).into_owned();
        if text.starts_with(FORMAT_V2) {
            return Ok(());
        }
        self.fs.write_atomic(
            FORMAT_FILE,
            format!("{FORMAT_V2}segment_size {}\n", self.opts.segment_size).as_bytes(),
        )?;
        Ok(())
    }

    /// Reads every record of a sealed segment, in order, verifying both
    /// CRCs, until its end record.
    pub fn scan_segment(
        &self,
        seg: u64,
        mut each: impl FnMut(u64, frame::Header, Bytes),
    ) -> Result<(), LogError> {
        if seg >= self.current_segment() {
            return Err(LogError::Io(format!("segment {seg} is not sealed")));
        }
        let size = self.opts.segment_size;
        let f = self.file(seg)?;
        let len = f.size()?.min(size);
        let mut off = 0;
        while off + HEADER as u64 <= len {
            let lsn = seg * size + off;
            let mut raw = [0u8; HEADER];
            f.read_exact_at(&mut raw, off)?;
            if frame::decode_header(&raw) == Slot::Zero {
                break;
            }
            let (h, payload) = self.read(lsn)?;
            if h.kind == KIND_SEGMENT_END {
                break;
            }
            off += frame::frame_len(h.len as usize) as u64;
            each(lsn, h, payload);
        }
        Ok(())
    }

    /// Removes a sealed segment file. Readers holding it keep reading the
    /// open file; new lookups of its records fail.
    pub fn remove_segment(&self, seg: u64) -> Result<u64, LogError> {
        if seg >= self.current_segment() {
            return Err(LogError::Io(format!("segment {seg} is not sealed")));
        }
        let size = self.file(seg)?.size()?;
        self.files.write().remove(&seg);
        self.fs.remove(&seg_name(seg))?;
        self.fs.sync_dir()?;
        self.reclaimed.fetch_add(size, Ordering::Relaxed);
        // docs/metrics.md; the total since start is `reclaimed_bytes`.
        metrics::counter!("weir_storage_reclaimed_bytes_total").increment(size);
        Ok(size)
    }

    /// Bytes given back by [`Engine::remove_segment`] since the log opened.
    pub fn reclaimed_bytes(&self) -> u64 {
        self.reclaimed.load(Ordering::Relaxed)
    }

    /// Stops accepting records and waits for queued ones to be written.
    pub fn close(&self) {
        self.reserve.lock().tx = None;
        if let Some(h) = self.committer.lock().take() {
            let _ = h.join();
        }
        // No zeros after close: a reopened log may write where they land.
        let mut r = self.reserve.lock();
        r.zero.on = false;
        while r.zero.busy.is_some() {
            r = self.zero_released.wait(r);
        }
        drop(r);
        self.zero_mailbox.post(true);
    }

    /// One step of the zeroer: claims the next chunk, writes and syncs its
    /// zeros, releases it. `Ok(false)`: nothing more is needed for now.
    fn zero_step(&self, file: &mut Option<(u64, Arc<dyn LogFile>)>) -> Result<bool, LogError> {
        let size = self.opts.segment_size;
        let (seg, start, end) = {
            let mut r = self.reserve.lock();
            if r.tx.is_none() || !r.zero.on {
                return Ok(false);
            }
            if r.zero.seg != r.seg {
                r.zero.seg = r.seg;
                r.zero.done = 0;
            }
            // Whatever the writer has reserved is not the zeroer's.
            r.zero.done = r.zero.done.max(r.off);
            let target = (r.off + ZERO_AHEAD).min(size);
            if r.zero.done >= target {
                r.zero.ask_at = if r.zero.done >= size {
                    u64::MAX
                } else {
                    r.zero.done.saturating_sub(ZERO_LOW_WATER)
                };
                return Ok(false);
            }
            let start = r.zero.done;
            // Chunks end on chunk boundaries (large aligned writes).
            let end = ((start / ZERO_CHUNK + 1) * ZERO_CHUNK).min(size);
            r.zero.busy = Some((r.seg, start, end));
            self.zero_busy.store(true, Ordering::Release);
            (r.seg, start, end)
        };
        let result = self.write_zeros(file, seg, start, end);
        let mut r = self.reserve.lock();
        r.zero.busy = None;
        self.zero_busy.store(false, Ordering::Release);
        self.zero_released.notify_all();
        if !result? {
            // The segment's file is not created yet (the committer creates
            // it with its first batch): ask again on the next submission.
            r.zero.ask_at = 0;
            return Ok(false);
        }
        if r.zero.seg == seg {
            r.zero.done = r.zero.done.max(end);
        }
        Ok(true)
    }

    /// Writes and syncs zeros over `[start, end)` of `seg` through the
    /// zeroer's own descriptor. `Ok(false)`: the segment file does not
    /// exist yet.
    fn write_zeros(
        &self,
        file: &mut Option<(u64, Arc<dyn LogFile>)>,
        seg: u64,
        start: u64,
        end: u64,
    ) -> Result<bool, LogError> {
        static ZEROS: [u8; ZERO_CHUNK as usize] = [0; ZERO_CHUNK as usize];
        let f = match file {
            Some((s, f)) if *s == seg => f,
            _ => {
                // The previous segment's handle is not needed any more.
                *file = None;
                match self.fs.open(&seg_name(seg), None) {
                    Ok(f) => &file.insert((seg, f)).1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let mut off = start;
        while off < end {
            let n = (end - off).min(ZERO_CHUNK);
            f.write_all_at(&ZEROS[..n as usize], off)?;
            off += n;
        }
        f.sync_data()?;
        Ok(true)
    }

    /// Blocks the committer while the zeroer writes a range that
    /// `[start, end)` of `seg` reaches into.
    fn wait_for_zeros(&self, seg: u64, start: u64, end: u64) {
        if !self.zero_busy.load(Ordering::Acquire) {
            return;
        }
        let mut r = self.reserve.lock();
        while let Some((s, a, b)) = r.zero.busy
            && s == seg
            && start < b
            && a < end
        {
            r = self.zero_released.wait(r);
        }
    }

    fn fail(&self, e: &LogError) {
        let mut p = self.poison.lock();
        if p.is_none() {
            tracing::error!(error = %e, "log write failed; refusing further writes");
            *p = Some(e.to_string());
            // Remember the last durable position for the next recovery
            // (best effort: the disk is failing).
            let durable = self.durable.load(Ordering::Acquire);
            if let Err(err) = self
                .fs
                .write_atomic(WRITE_FAILED_FILE, durable.to_string().as_bytes())
            {
                tracing::error!(error = %err, "could not record the last durable position");
            }
        }
        self.poisoned.store(true, Ordering::Release);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.reserve.get_mut().tx = None;
        self.zero_mailbox.post(true);
    }
}

/// The zeroer loop (see [`ZeroAhead`]): sleeps until a submission asks,
/// then writes zeros chunk by chunk until it is [`ZERO_AHEAD`] ahead of
/// the reserved position again.
fn zeroer(engine: &std::sync::Weak<Engine>, mailbox: &ZeroMailbox) {
    // The zeroer's own descriptors: a writeback error its sync reports is
    // then still reported to the committer's descriptor as well (Linux
    // reports such an error once per open file description).
    let mut file: Option<(u64, Arc<dyn LogFile>)> = None;
    loop {
        {
            let mut g = mailbox.state.lock();
            while !g.asked && !g.stop {
                g = mailbox.cv.wait(g);
            }
            if g.stop {
                return;
            }
            g.asked = false;
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        loop {
            match engine.zero_step(&mut file) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // Not fatal: commits go on into fallocated space, only
                    // slower. The committer's own sync reports the device.
                    tracing::warn!(error = %e, "zero-filling ahead of the log stopped");
                    let mut r = engine.reserve.lock();
                    r.zero.on = false;
                    r.zero.ask_at = u64::MAX;
                    return;
                }
            }
        }
    }
}

/// The committer loop: drain, write, sync, acknowledge.
fn committer(engine: std::sync::Weak<Engine>, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        drain(&rx, &mut jobs);
        // One yield before closing the batch. This thread usually runs
        // because a sync just finished or a first job just arrived, and on
        // a busy machine it took the core from a request handler that was
        // about to submit more. Yielding lets that handler (and anything
        // else already runnable here) go on first, so its appends join this
        // sync instead of waiting for the next one. It is not a delay: with
        // nothing else runnable the yield returns at once. Measured under
        // the benchmark's 75 connections: 20-26% fewer syncs and 3-14% more
        // appends/s (docs/storage.md, "Group commit").
        std::thread::yield_now();
        drain(&rx, &mut jobs);
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let result = if engine.poisoned.load(Ordering::Acquire) {
            Err(LogError::Poisoned(
                engine.poison.lock().clone().unwrap_or_default(),
            ))
        } else {
            write_batch(&engine, &jobs)
        };
        match result {
            Ok(end) => {
                engine.durable.fetch_max(end, Ordering::AcqRel);
                // Readers first: wake them from here rather than after the
                // appending tasks were scheduled. Consecutive jobs of one
                // stream publish once (progress is monotonic).
                let mut pending: Option<&OnDurable> = None;
                for p in jobs.iter().filter_map(|j| j.publish.as_ref()) {
                    if let Some(q) = pending
                        && !Arc::ptr_eq(&q.target, &p.target)
                    {
                        q.publish();
                    }
                    pending = Some(p);
                }
                if let Some(q) = pending {
                    q.publish();
                }
                for j in jobs {
                    if let Some(d) = j.done {
                        let _ = d.send(Ok(j.frame));
                    }
                }
            }
            Err(e) => {
                engine.fail(&e);
                let e = match e {
                    e @ (LogError::DiskFull(_) | LogError::Poisoned(_)) => e,
                    other => LogError::Poisoned(other.to_string()),
                };
                for j in jobs {
                    if let Some(d) = j.done {
                        let _ = d.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Moves every queued job into `jobs`, up to a batch's cap.
fn drain(rx: &mpsc::Receiver<Job>, jobs: &mut Vec<Job>) {
    jobs.extend(rx.try_iter().take(MAX_BATCH.saturating_sub(jobs.len())));
}

/// The most jobs one group commit takes; the rest wait for the next.
const MAX_BATCH: usize = 65_536;

/// Writes a batch (contiguous runs per segment) and syncs what it touched.
fn write_batch(engine: &Engine, jobs: &[Job]) -> Result<u64, LogError> {
    let mut i = 0;
    let mut end = 0;
    let mut touched: Vec<Arc<dyn LogFile>> = Vec::new();
    while i < jobs.len() {
        let seg = jobs[i].seg;
        let start = jobs[i].off;
        let mut buf = Vec::new();
        let mut j = i;
        while j < jobs.len() && jobs[j].seg == seg && jobs[j].off == start + buf.len() as u64 {
            buf.extend_from_slice(&jobs[j].frame);
            end = end.max(jobs[j].end);
            j += 1;
        }
        let existing = engine.files.read().get(&seg).cloned();
        let f = match existing {
            Some(f) => f,
            None => {
                let f = engine
                    .fs
                    .open(&seg_name(seg), Some(engine.opts.segment_size))?;
                engine.fs.sync_dir()?;
                engine.files.write().insert(seg, f.clone());
                f
            }
        };
        engine.wait_for_zeros(seg, start, start + buf.len() as u64);
        f.write_all_at(&buf, start)?;
        if !touched.iter().any(|t| Arc::ptr_eq(t, &f)) {
            touched.push(f);
        }
        i = j;
    }
    if engine.opts.sync == SyncMode::Data {
        let started = std::time::Instant::now();
        for f in &touched {
            f.sync_data()?;
        }
        let m = sync_metrics();
        m.duration.record(started.elapsed().as_secs_f64());
        m.batch.record(jobs.len() as f64);
    }
    Ok(end)
}

/// `weir_storage_sync_duration_seconds` and `weir_storage_sync_batch_size`
/// (docs/metrics.md), registered once: recording is an atomic add per
/// sync. No-ops unless a `metrics` recorder was installed before the first
/// sync.
struct SyncMetrics {
    duration: metrics::Histogram,
    batch: metrics::Histogram,
}

fn sync_metrics() -> &'static SyncMetrics {
    static M: std::sync::OnceLock<SyncMetrics> = std::sync::OnceLock::new();
    M.get_or_init(|| SyncMetrics {
        duration: metrics::histogram!("weir_storage_sync_duration_seconds"),
        batch: metrics::histogram!("weir_storage_sync_batch_size"),
    })
}
