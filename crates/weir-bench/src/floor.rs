//! The floor: a server that answers the benchmark's requests while doing
//! as little as a server can — no storage, no validation, no framework.
//!
//! Ratio targets against another server ("3× the Node server's appends",
//! "half its long-poll latency") only make sense while the measuring method
//! itself leaves room for them: the load generator shares the machine's
//! cores with the server, and the kernel's loopback TCP path costs the same
//! whatever the server does. Running the same workloads against this server
//! in the same run shows that room: its appends/s is the most any server can
//! reach with this client on these cores, its long-poll delivery latency the
//! least any server can show, and its SSE fan-out the cost of the socket
//! writes alone.
//!
//! With a data directory (`floor-server --data-dir`, `compare --servers
//! floor-durable`) its appends are durable the way Weir's log makes them:
//! one committer thread writes whatever is queued to one file, issues one
//! `fdatasync` and only then acknowledges the batch (group commit, no
//! timer, one yield of the core before a batch closes). That is the least
//! a durable server of this design can cost, and it separates what the
//! disk and the thread hand-off cost on this machine from what Weir's HTTP
//! stack and storage engine add.
//!
//! It speaks just enough HTTP/1.1 for the benchmark (keep-alive, a
//! `Content-Length` request body, hand-written response heads) and just
//! enough of the protocol's surface (create, `HEAD`, append, catch-up read,
//! long-poll, SSE) with integer offsets. Its catch-up reads copy each chunk
//! and are no floor (Weir reads faster); only its append, long-poll and SSE
//! figures are. It is a measuring instrument, not a
//! Durable Streams server: nothing it holds survives it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One stream: its bytes and a watch of its length that wakes readers.
struct Stream {
    data: Mutex<Vec<u8>>,
    len: watch::Sender<usize>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            data: Mutex::new(Vec::new()),
            len: watch::Sender::new(0),
        }
    }

    fn len(&self) -> usize {
        self.data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn append(&self, body: &[u8]) -> usize {
        let len = {
            let mut d = self.data.lock().unwrap_or_else(PoisonError::into_inner);
            d.extend_from_slice(body);
            d.len()
        };
        self.len.send_replace(len);
        len
    }

    /// Bytes from `from`, at most `max`.
    fn read(&self, from: usize, max: usize) -> (Vec<u8>, usize) {
        let d = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let from = from.min(d.len());
        let to = d.len().min(from.saturating_add(max));
        (d[from..to].to_vec(), d.len())
    }
}

#[derive(Default)]
struct State {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// The group-commit log, when durable.
    log: Option<GroupCommit>,
}

/// A queued append: its bytes and who to tell once they are synced.
type Job = (Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

/// Group commit onto one file: the committer drains everything queued,
/// writes it with one `write`, syncs once, then answers every job.
struct GroupCommit {
    tx: std::sync::mpsc::Sender<Job>,
}

impl GroupCommit {
    fn open(dir: &std::path::Path) -> anyhow::Result<GroupCommit> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("floor.log"))
            .context("opening the floor's log")?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("floor-commit".into())
            .spawn(move || {
                let mut buf = Vec::new();
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    // The same one yield before closing the batch as Weir's
                    // committer (docs/storage.md, "Group commit"), so the
                    // floor stays a floor for that commit policy.
                    std::thread::yield_now();
                    jobs.extend(rx.try_iter());
                    buf.clear();
                    for (bytes, _) in &jobs {
                        buf.extend_from_slice(bytes);
                    }
                    let result = file.write_all(&buf).and_then(|()| file.sync_data());
                    for (_, done) in jobs {
                        let _ = done.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                    if result.is_err() {
                        return;
                    }
                }
            })?;
        Ok(GroupCommit { tx })
    }

    /// Queues `bytes` and waits until they are synced.
    async fn append(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send((bytes.to_vec(), done))
            .map_err(|_| anyhow::anyhow!("the floor's committer stopped"))?;
        rx.await.context("the floor's committer stopped")??;
        Ok(())
    }
}

impl State {
    fn get(&self, path: &str) -> Option<Arc<Stream>> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .cloned()
    }

    fn create(&self, path: &str) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(path.to_owned())
            .or_insert_with(|| Arc::new(Stream::new()));
    }
}

/// Binds `127.0.0.1:0`, prints `listening on URL` and serves until killed;
/// appends are group-committed under `data_dir` when one is given.
pub async fn serve(data_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let log = data_dir.map(GroupCommit::open).transpose()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    let state = Arc::new(State {
        log,
        ..State::default()
    });
    loop {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        let state = state.clone();
        tokio::spawn(async move {
            // A connection ends on close or on a request it cannot parse.
            let _ = connection(sock, &state).await;
        });
    }
}

/// One parsed request head.
struct Request {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

async fn connection(mut sock: TcpStream, state: &State) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        out.clear();
        let stream = state.get(&req.path);
        match (req.method.as_str(), stream) {
            ("PUT", _) => {
                state.create(&req.path);
                respond(&mut out, "201 Created", 0, &[]);
            }
            ("HEAD", Some(s)) => respond(&mut out, "200 OK", s.len(), &[]),
            ("POST", Some(s)) => {
                if let Some(log) = &state.log {
                    log.append(&req.body).await?;
                }
                let len = s.append(&req.body);
                respond(&mut out, "204 No Content", len, &[]);
            }
            ("GET", Some(s)) => {
                let offset = param(&req.query, "offset").unwrap_or("-1");
                let from = match offset {
                    "-1" => 0,
                    "now" => s.len(),
                    o => o.parse().context("offset")?,
                };
                match param(&req.query, "live") {
                    Some("sse") => return sse(sock, &s, from).await,
                    Some("long-poll") => {
                        let mut rx = s.len.subscribe();
                        let waited = tokio::time::timeout(
                            Duration::from_secs(20),
                            rx.wait_for(|&len| len > from),
                        )
                        .await;
                        let (body, len) = s.read(from, usize::MAX);
                        let status = if waited.is_ok() {
                            "200 OK"
                        } else {
                            "204 No Content"
                        };
                        respond(&mut out, status, len, &body);
                    }
                    _ => {
                        let (body, len) = s.read(from, 8 << 20);
                        let next = from + body.len();
                        let extra = if next >= len {
                            "stream-up-to-date: true\r\n"
                        } else {
                            ""
                        };
                        respond_with(&mut out, "200 OK", next, extra, &body);
                    }
                }
            }
            _ => respond(&mut out, "404 Not Found", 0, &[]),
        }
        sock.write_all(&out).await?;
    }
}

/// An SSE response: the head, then one event per append until the reader
/// goes away.
async fn sse(mut sock: TcpStream, s: &Stream, mut from: usize) -> anyhow::Result<()> {
    sock.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await?;
    let mut rx = s.len.subscribe();
    let mut out = Vec::with_capacity(1024);
    loop {
        rx.wait_for(|&len| len > from).await?;
        let (data, len) = s.read(from, usize::MAX);
        from = len;
        out.clear();
        let event_len = "event: data\ndata: ".len() + data.len() + 2;
        out.extend_from_slice(format!("{event_len:x}\r\nevent: data\ndata: ").as_bytes());
        out.extend_from_slice(&data);
        out.extend_from_slice(b"\n\n\r\n");
        sock.write_all(&out).await?;
    }
}

fn respond(out: &mut Vec<u8>, status: &str, next_offset: usize, body: &[u8]) {
    respond_with(out, status, next_offset, "", body);
}

/// A response with `extra` header lines (each ending in CRLF) in its head.
fn respond_with(out: &mut Vec<u8>, status: &str, next_offset: usize, extra: &str, body: &[u8]) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\nstream-next-offset: {next_offset}\r\n{extra}content-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find_map(|(k, v)| (k == name).then_some(v))
}

/// Reads one request (head and `Content-Length` body); `None` on a clean
/// close between requests.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if !fill(sock, buf).await? {
            return Ok(None);
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("request head")?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().context("request line")?.split(' ');
    let method = first.next().context("method")?.to_owned();
    let target = first.next().context("target")?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    let mut length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().context("content-length")?;
        }
    }
    let total = head_end + 4 + length;
    while buf.len() < total {
        if !fill(sock, buf).await? {
            anyhow::bail!("closed inside a request body");
        }
    }
    let body = buf[head_end + 4..total].to_vec();
    buf.drain(..total);
    Ok(Some(Request {
        method,
        path,
        query,
        body,
    }))
}

async fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    let mut tmp = [0u8; 16 * 1024];
    let n = sock.read(&mut tmp).await?;
    buf.extend_from_slice(&tmp[..n]);
    Ok(n > 0)
}
