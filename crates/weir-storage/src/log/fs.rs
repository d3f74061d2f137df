//! The file operations the log engine uses, behind a trait so tests can
//! substitute a simulated disk that loses unsynced writes ([`sim`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory of log files.
pub trait Fs: Send + Sync + 'static {
    /// Names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Opens a file, creating it (with `len` bytes preallocated as zeros)
    /// if `create`. Creating does not make the new name durable: call
    /// [`Fs::sync_dir`].
    fn open(&self, name: &str, create: Option<u64>) -> io::Result<Arc<dyn LogFile>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Writes a whole small file atomically (temp file, sync, rename, sync dir).
    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Makes creations, renames and removals durable.
    fn sync_dir(&self) -> io::Result<()>;
    /// Bytes free on the device (for readiness and 507s).
    fn free_bytes(&self) -> io::Result<u64>;
    /// Whether writing zeros ahead of the log's write position makes its
    /// syncs cheaper (see `engine::ZeroAhead`): true where preallocated
    /// space is *unwritten* until first written, as on ext4 and XFS. The
    /// simulated disk has no such cost, and a second writing thread would
    /// make its fault schedule (the n-th write or sync) nondeterministic.
    fn zero_fill_pays(&self) -> bool {
        false
    }
}

/// One open file.
pub trait LogFile: Send + Sync {
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// `fdatasync`: everything written so far survives power loss.
    fn sync_data(&self) -> io::Result<()>;
    /// Current file size.
    fn size(&self) -> io::Result<u64>;
    /// Releases the disk space of `[off, off+len)` (best effort; reads of
    /// it return zeros afterwards).
    fn punch(&self, off: u64, len: u64) -> io::Result<()>;
}

/// The real file system.
pub struct RealFs {
    dir: PathBuf,
}

impl RealFs {
    pub fn new(dir: &Path) -> io::Result<RealFs> {
        std::fs::create_dir_all(dir)?;
        Ok(RealFs {
            dir: dir.to_path_buf(),
        })
    }
}

struct RealFile(File);

impl LogFile for RealFile {
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, off)
    }
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, off)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn punch(&self, off: u64, len: u64) -> io::Result<()> {
        let flags = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&self.0, flags, off, len).map_err(io::Error::from)
    }
}

impl Fs for RealFs {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            if let Some(n) = e?.file_name().to_str() {
                out.push(n.to_owned());
            }
        }
        Ok(out)
    }

    fn open(&self, name: &str, create: Option<u64>) -> io::Result<Arc<dyn LogFile>> {
        let path = self.dir.join(name);
        let f = match create {
            None => OpenOptions::new().read(true).write(true).open(&path)?,
            Some(len) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                // Preallocate so appends never change the file size (an
                // fdatasync then need not write the inode's size). The
                // space stays "unwritten" until written: the engine's
                // zeroer writes it ahead of the commits (engine::ZeroAhead).
                rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len)
                    .map_err(io::Error::from)?;
                f.sync_all()?;
                f
            }
        };
        Ok(Arc::new(RealFile(f)))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.dir.join(name))
    }

    fn write_atomic(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let f = File::create(&tmp)?;
            FileExt::write_all_at(&f, data, 0)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(name))?;
        self.sync_dir()
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn zero_fill_pays(&self) -> bool {
        true
    }

    fn free_bytes(&self) -> io::Result<u64> {
        let s = rustix::fs::statvfs(&self.dir).map_err(io::Error::from)?;
        Ok(s.f_bavail.saturating_mul(s.f_frsize))
    }
}
