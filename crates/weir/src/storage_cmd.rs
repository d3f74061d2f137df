//! `weir storage verify|backup`: offline checks and consistent copies of
//! an embedded-log data directory.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum StorageCmd {
    /// Check a data directory: record checksums, payloads, and that the log
    /// replays into a consistent store. Writes nothing; safe next to a
    /// running server. Exits 1 when damage is found.
    Verify {
        #[arg(long, env = "WEIR_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Copy a data directory, consistently, while the server keeps running.
    Backup {
        #[arg(long, env = "WEIR_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// Destination directory (must be empty or absent).
        #[arg(long)]
        to: PathBuf,
    },
}

pub fn run(cmd: StorageCmd) -> anyhow::Result<()> {
    match cmd {
        StorageCmd::Verify { data_dir } => {
            let s = weir_storage::log::backend::verify_dir(&data_dir)
                .with_context(|| format!("verifying {}", data_dir.display()))?;
            println!(
                "{} records in {} segments, {} streams, log ends at {}",
                s.report.records, s.report.segments, s.streams, s.report.end_lsn
            );
            if s.first_segment > 0 {
                println!(
                    "segments before {} were reclaimed by compaction; replay checked from the checkpoint at {}",
                    s.first_segment,
                    s.checkpoint.unwrap_or_default()
                );
            }
            if let Some(t) = &s.report.torn {
                println!("torn tail: {t} (recovery truncates it; unacknowledged data only)");
            }
            for p in &s.problems {
                println!("problem: {p}");
            }
            if !s.problems.is_empty() {
                anyhow::bail!("{} problems found", s.problems.len());
            }
            println!("ok");
            Ok(())
        }
        StorageCmd::Backup { data_dir, to } => {
            let bytes =
                weir_storage::log::backend::backup_dir(&data_dir, &to).with_context(|| {
                    format!("backing up {} to {}", data_dir.display(), to.display())
                })?;
            let s = weir_storage::log::backend::verify_dir(&to).context("verifying the backup")?;
            println!(
                "copied {bytes} bytes; the backup holds {} records and {} streams",
                s.report.records, s.streams
            );
            Ok(())
        }
    }
}
