//! A simulated disk for crash testing: it remembers, per file, what a
//! completed sync made durable and which writes came after, and
//! [`SimFs::crash`] produces the disk a power loss could leave behind —
//! every unsynced write dropped, kept, or torn (a random prefix of its
//! 512-byte sectors), chosen by a seed. Directory changes not covered by a
//! directory sync may be lost too. It also injects faults: failing syncs,
//! short writes and a full disk.
//!
//! SIGKILL tests cannot do this: the kernel keeps the page cache, so a
//! missing sync never shows. This layer is how the tests prove the engine
//! syncs what it acknowledges.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use super::fs::{Fs, LogFile};

const SECTOR: usize = 512;

#[derive(Clone, Debug, Default)]
struct SimFile {
    /// Contents as a reader sees them now.
    current: Vec<u8>,
    /// Contents as of the last completed sync.
    durable: Vec<u8>,
    /// Writes since the last sync, in order.
    pending: Vec<(u64, Vec<u8>)>,
}

/// Faults to inject.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail the n-th data sync from now (1 = the next one) with EIO.
    pub fail_sync: Option<u64>,
    /// Fail writes with ENOSPC once this many more bytes have been written.
    pub disk_full_after: Option<u64>,
    /// Make the n-th write from now write only half its bytes, then EIO.
    pub short_write: Option<u64>,
}

#[derive(Default)]
struct State {
    files: BTreeMap<String, Arc<Mutex<SimFile>>>,
    /// Names whose existence (or removal) a directory sync made durable.
    durable_names: BTreeSet<String>,
    faults: Faults,
    syncs: u64,
    writes: u64,
    written: u64,
}

/// A simulated directory.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

struct SimHandle {
    name: String,
    file: Arc<Mutex<SimFile>>,
    fs: SimFs,
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Sets faults to inject from now on.
    pub fn inject(&self, faults: Faults) {
        let mut s = self.state.lock();
        s.faults = faults;
        s.syncs = 0;
        s.writes = 0;
        s.written = 0;
    }

    /// The disk after a power loss at this instant. `seed` picks what
    /// happens to each unsynced write and directory change.
    pub fn crash(&self, seed: u64) -> SimFs {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let s = self.state.lock();
        let mut out = State::default();
        for (name, f) in &s.files {
            let f = f.lock();
            // A file whose creation was never made durable may be gone.
            if !s.durable_names.contains(name) && next() % 2 == 0 {
                continue;
            }
            let mut content = f.durable.clone();
            for (off, data) in &f.pending {
                match next() % 3 {
                    0 => {} // lost
                    1 => write_into(&mut content, *off, data),
                    _ => {
                        // Torn: a random subset of its sectors made it.
                        for (i, sector) in data.chunks(SECTOR).enumerate() {
                            if next() % 2 == 0 {
                                write_into(&mut content, *off + (i * SECTOR) as u64, sector);
                            }
                        }
                    }
                }
            }
            out.durable_names.insert(name.clone());
            out.files.insert(
                name.clone(),
                Arc::new(Mutex::new(SimFile {
                    current: content.clone(),
                    durable: content,
                    pending: Vec::new(),
                })),
            );
        }
        SimFs {
            state: Arc::new(Mutex::new(out)),
        }
    }
}

fn write_into(content: &mut Vec<u8>, off: u64, data: &[u8]) {
    let off = off as usize;
    if content.len() < off + data.len() {
        content.resize(off + data.len(), 0);
    }
    content[off..off + data.len()].copy_from_slice(data);
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated I/O error: {what}"))
}

impl LogFile for SimHandle {
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let (short, full) = {
            let mut s = self.fs.state.lock();
            s.writes += 1;
            let short = s.faults.short_write == Some(s.writes);
            let full = s
                .faults
                .disk_full_after
                .is_some_and(|n| s.written + buf.len() as u64 > n);
            s.written += buf.len() as u64;
            (short, full)
        };
        if full {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated disk full",
            ));
        }
        let buf = if short { &buf[..buf.len() / 2] } else { buf };
        let mut f = self.file.lock();
        write_into(&mut f.current, off, buf);
        f.pending.push((off, buf.to_vec()));
        if short {
            Err(eio("short write"))
        } else {
            Ok(())
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let f = self.file.lock();
        let off = off as usize;
        if off + buf.len() > f.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        buf.copy_from_slice(&f.current[off..off + buf.len()]);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            let mut s = self.fs.state.lock();
            s.syncs += 1;
            if s.faults.fail_sync == Some(s.syncs) {
                // Like Linux: the failed pages stay readable in the cache but
                // are marked clean, so no later sync writes them. A restart
                // without a power loss reads them back; a power loss drops
                // them.
                drop(s);
                self.file.lock().pending.clear();
                return Err(eio("fsync failed"));
            }
        }
        let mut f = self.file.lock();
        f.durable = f.current.clone();
        f.pending.clear();
        let _ = &self.name;
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.file.lock().current.len() as u64)
    }

    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        let mut f = self.file.lock();
        let end = (off + len).min(f.current.len() as u64) as usize;
        let start = (off as usize).min(end);
        f.current[start..end].fill(0);
        f.durable = f.current.clone();
        Ok(())
    }
}

impl Fs for SimFs {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.lock().files.keys().cloned().collect())
    }

    fn open(&self, name: &str, create: Option<u64>) -> io::Result<Arc<dyn LogFile>> {
        let mut s = self.state.lock();
        let file = match (s.files.get(name), create) {
            (Some(_), Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    name.to_owned(),
                ));
            }
            (Some(f), None) => f.clone(),
            (None, None) => return Err(io::Error::new(io::ErrorKind::NotFound, name.to_owned())),
            (None, Some(len)) => {
                // fallocate + fsync of the file: its size is durable, its
                // name is not until the directory is synced.
                let zeros = vec![0u8; len as usize];
                let f = Arc::new(Mutex::new(SimFile {
                    current: zeros.clone(),
                    durable: zeros,
                    pending: Vec::new(),
                }));
                s.files.insert(name.to_owned(), f.clone());
                f
            }
        };
        Ok(Arc::new(SimHandle {
            name: name.to_owned(),
            file,
            fs: self.clone(),
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.state.lock().files.remove(name);
        Ok(())
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        s.files.insert(
            name.to_owned(),
            Arc::new(Mutex::new(SimFile {
                current: data.to_vec(),
                durable: data.to_vec(),
                pending: Vec::new(),
            })),
        );
        s.durable_names.insert(name.to_owned());
        Ok(())
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let s = self.state.lock();
        let f = s
            .files
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_owned()))?;
        Ok(f.lock().current.clone())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.state.lock();
        s.durable_names = s.files.keys().cloned().collect();
        Ok(())
    }

    fn free_bytes(&self) -> io::Result<u64> {
        Ok(u64::MAX)
    }
}
