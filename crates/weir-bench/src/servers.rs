//! Starting the servers under test as child processes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A server configuration to benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// `weir serve --storage memory`.
    WeirMemory,
    /// `weir serve` on its durable default store.
    WeirDurable,
    /// The Node reference server in memory.
    NodeMemory,
    /// The Node reference server file-backed (LMDB + logs).
    NodeFile,
    /// The do-nothing reference server of [`crate::floor`].
    Floor,
    /// The same with appends group-committed to disk.
    FloorDurable,
}

impl fmt::Display for ServerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerKind::WeirMemory => "weir-memory",
            ServerKind::WeirDurable => "weir-durable",
            ServerKind::NodeMemory => "node-memory",
            ServerKind::NodeFile => "node-file",
            ServerKind::Floor => "floor",
            ServerKind::FloorDurable => "floor-durable",
        })
    }
}

impl FromStr for ServerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "weir-memory" => Ok(ServerKind::WeirMemory),
            "weir-durable" => Ok(ServerKind::WeirDurable),
            "node-memory" => Ok(ServerKind::NodeMemory),
            "node-file" => Ok(ServerKind::NodeFile),
            "floor" => Ok(ServerKind::Floor),
            "floor-durable" => Ok(ServerKind::FloorDurable),
            other => Err(format!("unknown server `{other}`")),
        }
    }
}

/// A running server.
pub struct Spawned {
    pub url: String,
    pub pid: u32,
    child: Child,
    _dir: tempfile::TempDir,
}

fn default_weir_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("weir")))
        .unwrap_or_else(|| PathBuf::from("weir"))
}

/// The weir binary to run: the given one, else the one next to this tool.
pub fn weir_bin(given: Option<&Path>) -> PathBuf {
    given.map_or_else(default_weir_bin, Path::to_path_buf)
}

impl Spawned {
    pub async fn start(
        kind: ServerKind,
        weir_bin: Option<&Path>,
        node_dir: &Path,
    ) -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        Spawned::spawn(kind, weir_bin, node_dir, &data, dir).await
    }

    /// A durable Weir on a given data directory (kept after stop).
    pub async fn start_in(
        kind: ServerKind,
        weir_bin: Option<&Path>,
        data: &Path,
    ) -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir()?;
        Spawned::spawn(kind, weir_bin, Path::new("bench/node"), data, dir).await
    }

    /// `weir serve` on port 0 with extra arguments.
    pub async fn weir(weir: &Path, extra: Vec<std::ffi::OsString>) -> anyhow::Result<Spawned> {
        let dir = tempfile::tempdir()?;
        let mut c = Command::new(weir);
        c.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "warn",
        ]);
        c.args(extra);
        Spawned::launch(c, "weir", dir).await
    }

    async fn spawn(
        kind: ServerKind,
        weir_bin: Option<&Path>,
        node_dir: &Path,
        data: &Path,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Spawned> {
        let data = data.to_path_buf();
        let weir = weir_bin.map_or_else(default_weir_bin, Path::to_path_buf);
        let cmd = match kind {
            ServerKind::WeirMemory | ServerKind::WeirDurable => {
                let mut c = Command::new(&weir);
                c.args([
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--log-level",
                    "warn",
                ]);
                if kind == ServerKind::WeirMemory {
                    c.args(["--storage", "memory"]);
                } else {
                    c.arg("--data-dir").arg(&data);
                }
                c
            }
            ServerKind::NodeMemory | ServerKind::NodeFile => {
                let mut c = Command::new("node");
                c.arg(node_dir.join("server.mjs"));
                if kind == ServerKind::NodeFile {
                    c.arg("--data-dir").arg(&data);
                }
                c
            }
            ServerKind::Floor | ServerKind::FloorDurable => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg("floor-server");
                if kind == ServerKind::FloorDurable {
                    c.arg("--data-dir").arg(&data);
                }
                c
            }
        };
        Spawned::launch(cmd, &kind.to_string(), dir).await
    }

    /// Runs `cmd` (which must print `listening on URL`), waiting up to
    /// `startup` for it to listen (a server under valgrind starts slowly).
    pub async fn command(cmd: Command, kind: &str, startup: Duration) -> anyhow::Result<Spawned> {
        Spawned::launch_within(cmd, kind, tempfile::tempdir()?, startup).await
    }

    async fn launch(cmd: Command, kind: &str, dir: tempfile::TempDir) -> anyhow::Result<Spawned> {
        Spawned::launch_within(cmd, kind, dir, Duration::from_secs(30)).await
    }

    async fn launch_within(
        mut cmd: Command,
        kind: &str,
        dir: tempfile::TempDir,
        startup: Duration,
    ) -> anyhow::Result<Spawned> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {kind}"))?;
        let pid = child.id().context("child has no pid")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(startup, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(u) = line.strip_prefix("listening on ") {
                    return Ok(u.trim().to_owned());
                }
            }
            bail!("{kind} exited before listening")
        })
        .await
        .with_context(|| format!("{kind} did not start within {startup:?}"))??;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Spawned {
            url,
            pid,
            child,
            _dir: dir,
        })
    }

    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(10)).await;
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop_within(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Resident set size of a process in MiB (Linux).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
