//! Runs the real `weir` binary as a child process for end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `weir serve`.
pub struct Served {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, from the line the server prints once bound.
    pub base: String,
}

/// Starts `weir serve` with `args` on port 0 and waits for its
/// `listening on` line. The child is killed when dropped.
pub async fn serve<I, S>(args: I) -> Served
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--port", "0", "--log-level", "warn"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("weir serve did not start within 30 s")
        .unwrap()
        .expect("weir serve exited before listening");
    let base = line
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    Served { child, base }
}

impl Served {
    /// SIGKILL: no shutdown code runs (the page cache survives).
    pub fn kill9(&self) {
        let pid = self.child.id().unwrap();
        std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    }
}
