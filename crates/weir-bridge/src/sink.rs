//! The Weir side: create the stream, find the last bridged sequence, and
//! append batches as an idempotent producer (PROTOCOL.md §5.2.1).
//!
//! Every append carries `Producer-Id` (the mapping name), `Producer-Epoch`
//! and `Producer-Seq` — so a retry of a request whose answer was lost is
//! answered `204` instead of being written twice — and `Stream-Seq` (the
//! batch's first JetStream sequence, zero-padded), so a batch that starts
//! at or before something already appended by *any* writer is refused
//! (`409 stream_seq_regression`) instead of duplicating it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap};

use crate::config::{BatchConfig, WeirAuth};
use crate::error::BridgeError;
use crate::metrics;
use crate::record::StoredSeq;

/// What became of one append.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// Weir holds the batch (written now, or by an earlier attempt whose
    /// answer was lost).
    Done,
    /// Some other writer appended at or past this batch's start, or the
    /// server lost this producer's state: re-read the tail and resume.
    Resync,
    /// Shutdown was requested while the append was still being retried.
    Interrupted,
}

/// An idempotent producer on one Weir stream.
#[derive(Debug)]
pub struct WeirSink {
    http: reqwest::Client,
    url: String,
    auth: WeirAuth,
    producer_id: String,
    mapping: String,
    epoch: u64,
    next_seq: u64,
    /// Whether Weir accepted anything from us in `epoch`. Before that, a
    /// `403` or a `204` means the epoch is taken and we claim the next one;
    /// after, it means a newer instance fenced us.
    owns_epoch: bool,
    max_backoff: Duration,
}

const JSON: &str = "application/json";

impl WeirSink {
    /// A producer named `producer_id`. The starting epoch is the wall
    /// clock in milliseconds, so a restarted bridge normally outranks its
    /// previous incarnation without reading anything; if the server has a
    /// higher epoch the first append claims the one after it.
    pub fn new(
        url: &str,
        auth: WeirAuth,
        producer_id: &str,
        batch: &BatchConfig,
    ) -> Result<WeirSink, BridgeError> {
        let http = reqwest::Client::builder()
            .timeout(batch.request_timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| BridgeError::Config(format!("HTTP client: {e}")))?;
        let epoch = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        Ok(WeirSink {
            http,
            url: url.trim_end_matches('/').to_owned(),
            auth,
            producer_id: producer_id.to_owned(),
            mapping: producer_id.to_owned(),
            epoch: u64::try_from(epoch).unwrap_or(0),
            next_seq: 0,
            owns_epoch: false,
            max_backoff: batch.max_backoff,
        })
    }

    /// The producer epoch in use (for logs and tests).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let b = self.http.request(method, url);
        match &self.auth {
            WeirAuth::None => b,
            WeirAuth::ApiKey(k) => b.header("x-api-key", k),
            WeirAuth::Bearer(t) => b.bearer_auth(t),
        }
    }

    fn refused(&self, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> BridgeError {
        let detail = String::from_utf8_lossy(body).chars().take(500).collect();
        let s = status.as_u16();
        match status {
            StatusCode::UNAUTHORIZED => BridgeError::Unauthorized {
                url: self.url.clone(),
                status: s,
                detail,
            },
            StatusCode::FORBIDDEN if !headers.contains_key("producer-epoch") => {
                BridgeError::Unauthorized {
                    url: self.url.clone(),
                    status: s,
                    detail,
                }
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => BridgeError::StreamGone {
                url: self.url.clone(),
                status: s,
            },
            _ => BridgeError::Rejected {
                url: self.url.clone(),
                status: s,
                detail,
            },
        }
    }

    /// Creates the stream as JSON if it does not exist (`PUT` is
    /// idempotent for an identical configuration); with `create` false,
    /// checks that it exists.
    pub async fn ensure_stream(&self, create: bool) -> Result<(), BridgeError> {
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            let req = if create {
                self.request(reqwest::Method::PUT, &self.url)
                    .header(CONTENT_TYPE, JSON)
            } else {
                self.request(reqwest::Method::HEAD, &self.url)
            };
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let ct = r
                        .headers()
                        .get(CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(JSON)
                        .to_ascii_lowercase();
                    if !ct.starts_with(JSON) {
                        return Err(BridgeError::Rejected {
                            url: self.url.clone(),
                            status: r.status().as_u16(),
                            detail: format!(
                                "the stream's content type is `{ct}`; the bridge needs {JSON}"
                            ),
                        });
                    }
                    return Ok(());
                }
                Ok(r) if retryable(r.status()) => {
                    tracing::warn!(url = %self.url, status = %r.status(), "creating stream; retrying");
                }
                Ok(r) => {
                    let (status, headers) = (r.status(), r.headers().clone());
                    let body = r.bytes().await.unwrap_or_default();
                    return Err(self.refused(status, &headers, &body));
                }
                Err(e) => tracing::warn!(url = %self.url, error = %e, "creating stream; retrying"),
            }
            backoff.wait().await;
        }
    }

    /// The JetStream sequence of the last record on the stream (`None`
    /// when it is empty), read from the beginning page by page.
    pub async fn tail_seq(&self) -> Result<Option<u64>, BridgeError> {
        let mut offset = "-1".to_owned();
        let mut last = None;
        let mut backoff = Backoff::new(self.max_backoff);
        loop {
            let r = match self
                .request(reqwest::Method::GET, &self.url)
                .query(&[("offset", offset.as_str())])
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "reading the stream's tail; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            let status = r.status();
            if retryable(status) {
                tracing::warn!(url = %self.url, %status, "reading the stream's tail; retrying");
                backoff.wait().await;
                continue;
            }
            let headers = r.headers().clone();
            let body = match r.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "reading the stream's tail; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            if !status.is_success() {
                return Err(self.refused(status, &headers, &body));
            }
            if !body.is_empty() {
                let records: Vec<StoredSeq> =
                    serde_json::from_slice(&body).map_err(|e| BridgeError::ForeignRecords {
                        url: self.url.clone(),
                        detail: e.to_string(),
                    })?;
                if let Some(r) = records.last() {
                    last = Some(r.seq);
                }
            }
            let next = headers
                .get("stream-next-offset")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let up_to_date = headers.contains_key("stream-up-to-date");
            match next {
                Some(n) if !up_to_date && n != offset => offset = n,
                _ => return Ok(last),
            }
        }
    }

    /// Appends one batch (a JSON array of records whose first JetStream
    /// sequence is `first_seq`), retrying connection errors, timeouts,
    /// `5xx` and `429` with the *same* producer sequence until Weir
    /// answers or `stop` is set.
    pub async fn append(
        &mut self,
        body: Bytes,
        first_seq: u64,
        events: usize,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Appended, BridgeError> {
        let stream_seq = format!("{first_seq:020}");
        let mut backoff = Backoff::new(self.max_backoff);
        // Whether an earlier attempt of this request may have reached Weir.
        let mut maybe_sent = false;
        let mut attempts = 0u32;
        loop {
            // The first attempt goes out even when stopping (a graceful stop
            // appends the batch in hand); retries give way to the stop.
            if attempts > 0 && *stop.borrow() {
                return Ok(Appended::Interrupted);
            }
            attempts += 1;
            let started = Instant::now();
            let sent = self
                .request(reqwest::Method::POST, &self.url)
                .header(CONTENT_TYPE, JSON)
                .header("producer-id", &self.producer_id)
                .header("producer-epoch", self.epoch)
                .header("producer-seq", self.next_seq)
                .header("stream-seq", &stream_seq)
                .body(body.clone())
                .send()
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    maybe_sent = true;
                    metrics::retry(&self.mapping, "connection");
                    tracing::warn!(url = %self.url, error = %e, "append failed; retrying the same producer sequence");
                    backoff.wait_or_stop(stop).await;
                    continue;
                }
            };
            let status = r.status();
            let headers = r.headers().clone();
            let answered_epoch = header_u64(&headers, "producer-epoch");
            match status {
                StatusCode::OK => {
                    metrics::appended(&self.mapping, events, started.elapsed());
                    self.accepted();
                    return Ok(Appended::Done);
                }
                StatusCode::NO_CONTENT if maybe_sent => {
                    // Our own earlier attempt landed; its answer was lost.
                    metrics::appended(&self.mapping, events, started.elapsed());
                    self.accepted();
                    return Ok(Appended::Done);
                }
                StatusCode::NO_CONTENT | StatusCode::FORBIDDEN if answered_epoch.is_some() => {
                    // A fresh request called a duplicate, or a stale epoch:
                    // someone else holds this producer's epoch.
                    let current = answered_epoch.unwrap_or(self.epoch);
                    if self.owns_epoch {
                        return Err(BridgeError::Fenced {
                            mapping: self.mapping.clone(),
                            detail: format!(
                                "Weir answered {status} for producer epoch {} (server epoch {current})",
                                self.epoch
                            ),
                        });
                    }
                    tracing::info!(
                        old = self.epoch,
                        new = current + 1,
                        "claiming the next producer epoch"
                    );
                    self.epoch = current.max(self.epoch) + 1;
                    self.next_seq = 0;
                    maybe_sent = false;
                    continue;
                }
                StatusCode::CONFLICT => {
                    let body = r.bytes().await.unwrap_or_default();
                    if headers.contains_key("stream-closed") {
                        return Err(BridgeError::StreamClosed {
                            url: self.url.clone(),
                        });
                    }
                    let code = problem_code(&body);
                    if code == "stream_seq_regression" {
                        // Another writer appended at or past this batch's
                        // start. Weir changed nothing for our producer, so
                        // keep the epoch (a newer owner still fences us on
                        // the next append) and resume from the tail.
                        tracing::info!(url = %self.url, "Stream-Seq regression; resynchronising from the stream's tail");
                        metrics::retry(&self.mapping, "resync");
                        return Ok(Appended::Resync);
                    }
                    if headers.contains_key("producer-expected-seq") {
                        // Weir lost this producer's state (e.g. a restarted
                        // memory backend): claim a fresh epoch, resume from
                        // the tail; `Stream-Seq` keeps that duplicate-free.
                        tracing::info!(url = %self.url, "producer sequence gap; new epoch, resynchronising");
                        metrics::retry(&self.mapping, "resync");
                        self.epoch += 1;
                        self.next_seq = 0;
                        self.owns_epoch = false;
                        return Ok(Appended::Resync);
                    }
                    return Err(self.refused(status, &headers, &body));
                }
                s if retryable(s) => {
                    maybe_sent = true;
                    metrics::retry(&self.mapping, "status");
                    tracing::warn!(url = %self.url, status = %s, "append failed; retrying the same producer sequence");
                    backoff.wait_or_stop(stop).await;
                }
                _ => {
                    let body = r.bytes().await.unwrap_or_default();
                    return Err(self.refused(status, &headers, &body));
                }
            }
        }
    }

    fn accepted(&mut self) {
        self.owns_epoch = true;
        self.next_seq += 1;
    }
}

fn retryable(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn problem_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

/// Exponential backoff from 50 ms, doubling up to a cap, with jitter so
/// several bridges do not retry in step against a recovering server.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(50),
            max,
        }
    }

    fn step(&mut self) -> Duration {
        let base = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        let jitter = u64::from(time::OffsetDateTime::now_utc().nanosecond()) % 1000;
        base + Duration::from_micros(jitter * base.as_millis().min(1000) as u64 / 10)
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    pub(crate) async fn wait_or_stop(&mut self, stop: &tokio::sync::watch::Receiver<bool>) {
        let mut stop = stop.clone();
        let d = self.step();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}
