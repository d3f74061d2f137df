//! Live reads: long-poll (PROTOCOL.md §5.7) and SSE (§5.8).
//!
//! Both follow the same pattern: subscribe to the stream's tail watch
//! *first*, then read, then wait on the watch — so an append that lands
//! between the read and the wait still wakes the reader. The watch ticks
//! once per durable commit, so parked readers cost one small future each and
//! are woken once per batch, not once per append.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body as HttpBody;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use rand::Rng;
use serde::Serialize;
use std::pin::Pin;

use tokio::time::Sleep;
use weir_core::StreamName;
use weir_core::cursor::next_cursor;
use weir_core::offset::ReadFrom;
use weir_storage::{ReadChunk, TailWatch};

use crate::AppState;
use crate::error::ApiError;
use crate::headers;
use crate::metrics::LiveMode;
use crate::query::ReadQuery;
use crate::streams::{cache_control, data_response, etag};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn cursor(client: Option<&str>) -> String {
    let jitter = rand::thread_rng().gen_range(1..=3600);
    next_cursor(now_ms(), client, jitter).to_string()
}

fn set(resp: &mut Response, name: http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Waits for the watch to tick, the timer to fire or the server to begin
/// shutting down. Returns `false` on timeout or shutdown. The timer is
/// created once per request and reused across waits: re-arming a timer per
/// wake-up showed up in fan-out profiles.
async fn wait(st: &AppState, watch: &mut TailWatch, timer: &mut Pin<Box<Sleep>>) -> bool {
    tokio::select! {
        r = watch.changed() => {
            if r.is_err() {
                // The stream was freed; the next read reports why.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            true
        }
        () = timer.as_mut() => false,
        () = st.closing() => false,
    }
}

pub async fn long_poll(
    st: &AppState,
    name: StreamName,
    q: ReadQuery,
) -> Result<Response, ApiError> {
    let _slot = st.shedder.live(LiveMode::LongPoll)?;
    let mut watch = st.storage.watch(&name).await?;
    let mut timer = Box::pin(tokio::time::sleep(st.config.long_poll_timeout));
    let mut from = q.offset.unwrap_or(ReadFrom::Start);
    loop {
        let chunk = st
            .storage
            .read(&name, from, st.config.max_read_bytes)
            .await?;
        if !chunk.pieces.is_empty() {
            let mut resp = data_response(st, &chunk, StatusCode::OK);
            if !chunk.at_eof() {
                set(
                    &mut resp,
                    headers::STREAM_CURSOR,
                    &cursor(q.cursor.as_deref()),
                );
            }
            set(&mut resp, header::ETAG, &etag(&chunk));
            set(&mut resp, header::CACHE_CONTROL, cache_control(st, true));
            return Ok(resp);
        }
        if chunk.at_eof() {
            return Ok(empty_poll(&chunk, None));
        }
        from = ReadFrom::At(chunk.next);
        if !wait(st, &mut watch, &mut timer).await {
            return Ok(empty_poll(&chunk, Some(cursor(q.cursor.as_deref()))));
        }
    }
}

/// `204 No Content` for a long-poll that found no data.
fn empty_poll(chunk: &ReadChunk, cursor: Option<String>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set(
        &mut resp,
        headers::STREAM_NEXT_OFFSET,
        &chunk.next.to_string(),
    );
    set(&mut resp, headers::STREAM_UP_TO_DATE, "true");
    if chunk.info.closed {
        set(&mut resp, headers::STREAM_CLOSED, "true");
    }
    if let Some(c) = cursor {
        set(&mut resp, headers::STREAM_CURSOR, &c);
    }
    set(&mut resp, header::CACHE_CONTROL, "no-store");
    resp
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Control<'a> {
    stream_next_offset: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_cursor: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    up_to_date: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream_closed: bool,
}

/// How data events are encoded for this stream.
#[derive(Clone, Copy)]
enum Encoding {
    Json,
    Text,
    Base64,
}

struct SseState {
    st: AppState,
    name: StreamName,
    watch: TailWatch,
    from: ReadFrom,
    pending: Option<ReadChunk>,
    encoding: Encoding,
    client_cursor: Option<String>,
    timer: Pin<Box<Sleep>>,
    sent_control: bool,
    done: bool,
    /// Held while the SSE body is open (released when the client goes):
    /// the live-reader budget and `weir_live_readers{mode="sse"}`.
    _slot: crate::limits::LiveSlot,
}

pub async fn sse(st: &AppState, name: StreamName, q: ReadQuery) -> Result<Response, ApiError> {
    let slot = st.shedder.live(LiveMode::Sse)?;
    let watch = st.storage.watch(&name).await?;
    let first = st
        .storage
        .read(
            &name,
            q.offset.unwrap_or(ReadFrom::Start),
            st.config.max_read_bytes,
        )
        .await?;
    let ct = &first.info.content_type;
    let encoding = if ct.is_json() {
        Encoding::Json
    } else if ct.is_text_like() {
        Encoding::Text
    } else {
        Encoding::Base64
    };
    let state = SseState {
        st: st.clone(),
        name,
        watch,
        from: ReadFrom::At(first.start),
        pending: Some(first),
        encoding,
        client_cursor: q.cursor,
        timer: Box::pin(tokio::time::sleep(st.config.sse_max_duration)),
        sent_control: false,
        done: false,
        _slot: slot,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let frame = next_frame(&mut s).await?;
        Some((Ok::<Bytes, std::io::Error>(frame), s))
    });
    let mut resp = (StatusCode::OK, HttpBody::from_stream(stream)).into_response();
    set(&mut resp, header::CONTENT_TYPE, "text/event-stream");
    set(&mut resp, header::CACHE_CONTROL, "no-cache");
    set(
        &mut resp,
        http::HeaderName::from_static("x-accel-buffering"),
        "no",
    );
    if matches!(encoding, Encoding::Base64) {
        set(&mut resp, headers::STREAM_SSE_DATA_ENCODING, "base64");
    }
    Ok(resp)
}

/// Produces the next bytes of the SSE body, or `None` to end it.
async fn next_frame(s: &mut SseState) -> Option<Bytes> {
    loop {
        if s.done {
            return None;
        }
        let chunk = match s.pending.take() {
            Some(c) => c,
            None => {
                s.st.storage
                    .read(&s.name, s.from, s.st.config.max_read_bytes)
                    .await
                    .ok()?
            }
        };
        s.from = ReadFrom::At(chunk.next);
        let eof = chunk.at_eof();
        if !chunk.pieces.is_empty() {
            let mut out = BytesMut::new();
            data_event(&mut out, s.encoding, &chunk);
            control_event(&mut out, &chunk, s.client_cursor.as_deref());
            s.sent_control = true;
            s.done = eof;
            return Some(out.freeze());
        }
        if eof || !s.sent_control {
            let mut out = BytesMut::new();
            control_event(&mut out, &chunk, s.client_cursor.as_deref());
            s.sent_control = true;
            s.done = eof;
            return Some(out.freeze());
        }
        if !wait(&s.st, &mut s.watch, &mut s.timer).await {
            return None;
        }
    }
}

fn control_event(out: &mut BytesMut, c: &ReadChunk, client_cursor: Option<&str>) {
    let eof = c.at_eof();
    let cur = (!eof).then(|| cursor(client_cursor));
    let control = Control {
        stream_next_offset: c.next.to_string(),
        stream_cursor: cur.as_deref(),
        up_to_date: c.up_to_date,
        stream_closed: eof,
    };
    out.put_slice(b"event: control\ndata:");
    out.put_slice(&serde_json::to_vec(&control).unwrap_or_default());
    out.put_slice(b"\n\n");
}

fn data_event(out: &mut BytesMut, enc: Encoding, c: &ReadChunk) {
    out.put_slice(b"event: data\n");
    match enc {
        Encoding::Json => {
            let mut body = Vec::with_capacity(c.byte_len() + c.pieces.len() + 2);
            weir_core::json::wrap_array(c.pieces.iter().map(|p| &p[..]), &mut body);
            data_lines(out, &body);
        }
        Encoding::Text => {
            let body = c.pieces.concat();
            data_lines(out, &body);
        }
        Encoding::Base64 => {
            let body = c.pieces.concat();
            out.put_slice(b"data:");
            out.put_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(&body)
                    .as_bytes(),
            );
            out.put_slice(b"\n");
        }
    }
    out.put_slice(b"\n");
}

/// Writes `body` as `data:` lines, splitting on every SSE line terminator
/// (`\r\n`, `\n`, `\r`), so payload bytes can never end the event or start a
/// forged one.
fn data_lines(out: &mut BytesMut, body: &[u8]) {
    let mut i = 0;
    let mut start = 0;
    while i < body.len() {
        match body[i] {
            b'\n' | b'\r' => {
                out.put_slice(b"data:");
                out.put_slice(&body[start..i]);
                out.put_slice(b"\n");
                if body[i] == b'\r' && body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.put_slice(b"data:");
    out.put_slice(&body[start..]);
    out.put_slice(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_on_every_terminator() {
        let mut out = BytesMut::new();
        data_lines(&mut out, b"a\r\n\r\nevent: x\rb\nc");
        assert_eq!(&out[..], b"data:a\ndata:\ndata:event: x\ndata:b\ndata:c\n");
    }
}
