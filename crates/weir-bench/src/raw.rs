//! A minimal HTTP/1.1 keep-alive client for the append workloads.
//!
//! The load generator shares the machine's two cores with the server under
//! test, so every microsecond it spends per request is taken from the
//! server. A general client (reqwest/hyper: header maps, pools, body
//! streams) costs several times more CPU per small request than writing one
//! pre-encoded request and scanning the response head. Both servers in a
//! comparison are driven by this same client, so ratios stay fair.

use std::time::Instant;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection that sends the same POST over and over.
pub struct Poster {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Poster {
    /// Connects to `base` (`http://host:port`) and prepares a POST of
    /// `body` to `path`.
    pub async fn connect(
        base: &str,
        path: &str,
        body: &[u8],
        api_key: Option<&str>,
    ) -> anyhow::Result<Poster> {
        let (stream, host) = connect(base).await?;
        let request = head(
            format!(
                "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n",
                body.len()
            ),
            api_key,
        );
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        Ok(Poster {
            stream,
            request,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends the request once; returns the status and the latency.
    pub async fn post(&mut self) -> anyhow::Result<(u16, f64)> {
        let t = Instant::now();
        self.stream.write_all(&self.request).await?;
        let status = self.read_response().await?;
        Ok((status, t.elapsed().as_secs_f64() * 1000.0))
    }

    /// Reads one response (head, then a `Content-Length` or chunked body)
    /// and returns its status.
    async fn read_response(&mut self) -> anyhow::Result<u16> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).context("response head")?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .context("status line")?;
                let mut length = 0usize;
                let mut chunked = false;
                for line in head.split("\r\n").skip(1) {
                    let Some((k, v)) = line.split_once(':') else {
                        continue;
                    };
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().context("content-length")?;
                    } else if k.eq_ignore_ascii_case("transfer-encoding")
                        && v.to_ascii_lowercase().contains("chunked")
                    {
                        chunked = true;
                    }
                }
                let body_start = end + 4;
                if chunked {
                    self.finish_chunked(body_start).await?;
                } else {
                    while self.buf.len() < body_start + length {
                        self.fill().await?;
                    }
                    self.buf.drain(..body_start + length);
                }
                return Ok(status);
            }
            self.fill().await?;
        }
    }

    /// Skips a chunked body that starts at `at`.
    async fn finish_chunked(&mut self, mut at: usize) -> anyhow::Result<()> {
        loop {
            let line_end = loop {
                if let Some(e) = find(&self.buf[at..], b"\r\n") {
                    break at + e;
                }
                self.fill().await?;
            };
            let size_text = std::str::from_utf8(&self.buf[at..line_end])?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .context("chunk size")?;
            let next = line_end + 2 + size + 2;
            while self.buf.len() < next {
                self.fill().await?;
            }
            at = next;
            if size == 0 {
                self.buf.drain(..at);
                return Ok(());
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut tmp = [0u8; 4096];
        let n = self.stream.read(&mut tmp).await?;
        if n == 0 {
            bail!("connection closed by the server");
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}

/// A no-delay connection to `base` (`http://host:port`) and its host part.
async fn connect(base: &str) -> anyhow::Result<(TcpStream, &str)> {
    let host = base
        .strip_prefix("http://")
        .context("the raw client speaks plain http:// only")?
        .trim_end_matches('/');
    let stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    Ok((stream, host))
}

/// Ends a request head: the optional `X-Api-Key` line, then the blank line.
fn head(mut lines: String, api_key: Option<&str>) -> String {
    if let Some(k) = api_key {
        lines.push_str(&format!("x-api-key: {k}\r\n"));
    }
    lines.push_str("\r\n");
    lines
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// CPU time (user + system) a process has used, in seconds, from
/// `/proc/PID/stat` (clock ticks of 1/100 s on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 (1-based) of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Opens `GET path` on a new connection (an SSE or other streaming read)
/// and returns the socket once the response head is in, with whatever body
/// bytes arrived with it.
pub async fn open_stream(
    base: &str,
    path: &str,
    api_key: Option<&str>,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let (mut stream, host) = connect(base).await?;
    let request = head(
        format!("GET {path} HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\n"),
        api_key,
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 200") {
                bail!(
                    "stream request refused: {}",
                    String::from_utf8_lossy(&buf[..end.min(200)])
                );
            }
            buf.drain(..end + 4);
            return Ok((stream, buf));
        }
        let mut tmp = [0u8; 4096];
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Scans `buf` for `t=<micros>;` markers, calls `each` with every value,
/// and drops the consumed bytes (a marker cut by a read boundary stays for
/// the next call). No allocation per event.
pub fn take_markers(buf: &mut Vec<u8>, mut each: impl FnMut(u64)) {
    let mut consumed = 0;
    let mut at = 0;
    while let Some(i) = find(&buf[at..], b"t=") {
        let start = at + i + 2;
        let Some(len) = buf[start..].iter().position(|&b| b == b';') else {
            break;
        };
        let digits = &buf[start..start + len];
        if let Some(v) = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            each(v);
        }
        at = start + len + 1;
        consumed = at;
    }
    if consumed > 0 {
        buf.drain(..consumed);
    } else if buf.len() > 64 * 1024 {
        // No marker in a long stretch: keep only a possible partial one.
        let keep = buf.len() - 32;
        buf.drain(..keep);
    }
}
