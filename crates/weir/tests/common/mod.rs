//! Runs the real `weir` binary as a child process for end-to-end tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

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
    let (child, mut lines) = spawn_serve(args);
    let base = printed(&mut lines, "listening on ").await;
    Served { child, base }
}

/// Spawns `weir serve --port 0 --log-level warn` with `args` (killed when
/// dropped) and returns it with its stdout, for [`printed`].
pub fn spawn_serve<I, S>(args: I) -> (Child, Lines<BufReader<ChildStdout>>)
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
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

/// The next line `weir serve` prints (within 30 s), which must start with
/// `prefix`: the rest of it (`listening on ` → the base URL).
pub async fn printed(lines: &mut Lines<BufReader<ChildStdout>>, prefix: &str) -> String {
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("weir serve did not start within 30 s")
        .unwrap()
        .expect("weir serve exited before listening");
    line.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}…, got {line:?}"))
        .to_owned()
}

/// `weir serve --storage memory --config CONFIG` (see [`serve`]).
pub async fn serve_memory(config: &Path) -> Served {
    serve([
        OsStr::new("--storage"),
        OsStr::new("memory"),
        OsStr::new("--config"),
        config.as_os_str(),
    ])
    .await
}

/// Writes `contents` to `weir.toml` in `dir` and returns its path.
pub fn config_file(dir: &Path, contents: &str) -> PathBuf {
    let path = dir.join("weir.toml");
    std::fs::write(&path, contents).unwrap();
    path
}

/// The issuer [`jwt_auth`] trusts and [`idp_token`] signs as.
pub const ISSUER: &str = "https://idp.test/";

/// `[auth]` requiring HS256 JWTs from [`ISSUER`] for the audience `weir`,
/// signed with `secret` (a configuration file's text; append to it).
pub fn jwt_auth(secret: &str) -> String {
    format!(
        "[auth]\nmode = \"required\"\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudience = [\"weir\"]\nhs256_secret = \"{secret}\"\n"
    )
}

/// A token [`jwt_auth`] accepts: `claims` with the issuer and audience.
pub fn idp_token(secret: &str, mut claims: serde_json::Value) -> String {
    claims["iss"] = ISSUER.into();
    claims["aud"] = "weir".into();
    weir_testkit::jwt::hs256(secret.as_bytes(), claims)
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
