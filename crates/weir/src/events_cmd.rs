//! `weir events tail` and `weir dlq list|show|replay` (docs/events.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use futures::StreamExt;
use weir_service::Transport;
use weir_service::durable::{DeadLetter, DeadLetters, StartAt, read_family, stream_of};
use weir_service::transport::nats::{ConnectConfig, NatsTransport};

/// Where NATS is.
#[derive(Args, Debug, Clone)]
pub struct Nats {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long = "nats",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// A `.creds` file (JWT + NKey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,
}

impl Nats {
    async fn connect(&self) -> anyhow::Result<NatsTransport> {
        let cfg = ConnectConfig {
            servers: self.url.clone(),
            name: Some("weir-cli".into()),
            creds_file: self.creds.clone(),
            ..ConnectConfig::default()
        };
        tokio::time::timeout(Duration::from_secs(10), cfg.connect())
            .await
            .context("timed out connecting to NATS")?
            .context("connecting to NATS")
    }
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Print events on SUBJECT as they arrive; with --from-seq or
    /// --from-time, first the stored ones from that point (read through an
    /// ephemeral ordered consumer: nothing is acknowledged).
    Tail(TailArgs),
}

#[derive(Args, Debug)]
pub struct TailArgs {
    /// Subject or pattern (`orders.>`).
    pub subject: String,
    #[command(flatten)]
    pub nats: Nats,
    /// Start at this stream sequence.
    #[arg(long, conflicts_with = "from_time")]
    pub from_seq: Option<u64>,
    /// Start at this time (RFC 3339).
    #[arg(long)]
    pub from_time: Option<String>,
    /// Exit after this many events.
    #[arg(long)]
    pub count: Option<usize>,
}

#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// List dead letters (sequence, consumer, subject, error).
    List {
        #[command(flatten)]
        nats: Nats,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON document per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: payload, headers, error and every attempt.
    Show {
        id: u64,
        #[command(flatten)]
        nats: Nats,
    },
    /// Republish dead letters to their original subjects and remove them.
    Replay {
        /// The dead letter's sequence (omit with --all).
        #[arg(required_unless_present = "all")]
        id: Option<u64>,
        /// Every dead letter.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        nats: Nats,
    },
}

fn start_of(a: &TailArgs) -> anyhow::Result<Option<StartAt>> {
    if let Some(s) = a.from_seq {
        return Ok(Some(StartAt::Sequence(s)));
    }
    if let Some(t) = &a.from_time {
        let t = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("--from-time `{t}` is not RFC 3339"))?;
        return Ok(Some(StartAt::Time(t)));
    }
    Ok(None)
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

pub fn events(cmd: EventsCmd) -> anyhow::Result<()> {
    match cmd {
        EventsCmd::Tail(a) => crate::runtime()?.block_on(tail(a)),
    }
}

async fn tail(a: TailArgs) -> anyhow::Result<()> {
    let t = a.nats.connect().await?;
    let limit = a.count.unwrap_or(usize::MAX);
    let mut n = 0usize;
    match start_of(&a)? {
        None => {
            let mut sub = t
                .subscribe(a.subject.clone(), None)
                .await
                .context("subscribe")?;
            while n < limit {
                let Some(m) = sub.next().await else { break };
                println!("{} {}", m.subject, text(&m.payload));
                n += 1;
            }
        }
        Some(start) => {
            let js = t.jetstream();
            let stream = stream_of(js, &a.subject).await?;
            let mut msgs = read_family(js, &stream, &a.subject, start).await?;
            while n < limit {
                let Some(m) = msgs.next().await else { break };
                let m = m?;
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
                println!("{seq} {} {}", m.subject, text(&m.payload));
                n += 1;
            }
        }
    }
    Ok(())
}

fn summary(seq: u64, d: &DeadLetter) -> String {
    format!(
        "{seq:>8}  {:<24} {:<28} {:>3} attempts  {}: {}",
        d.consumer,
        d.subject,
        d.attempts.len(),
        d.error.code.as_str(),
        d.error.detail
    )
}

pub fn dlq(cmd: DlqCmd) -> anyhow::Result<()> {
    crate::runtime()?.block_on(async {
        match cmd {
            DlqCmd::List { nats, limit, json } => {
                let d = DeadLetters::new(nats.connect().await?.jetstream().clone());
                d.ensure().await?;
                let all = d.list(limit).await?;
                if json {
                    for (seq, l) in &all {
                        println!("{}", serde_json::json!({"seq": seq, "dead_letter": l}));
                    }
                } else if all.is_empty() {
                    println!("no dead letters");
                } else {
                    for (seq, l) in &all {
                        println!("{}", summary(*seq, l));
                    }
                }
            }
            DlqCmd::Show { id, nats } => {
                let d = DeadLetters::new(nats.connect().await?.jetstream().clone());
                let l = d.get(id).await?;
                let mut v = serde_json::to_value(&l)?;
                // Readable payload next to the base64 one when it is text.
                if let Ok(p) = l.payload_bytes()
                    && let Ok(s) = String::from_utf8(p)
                {
                    v["payload_text"] = serde_json::Value::String(s);
                }
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            DlqCmd::Replay { id, all, nats } => {
                let d = DeadLetters::new(nats.connect().await?.jetstream().clone());
                let ids: Vec<u64> = if all {
                    d.list(usize::MAX)
                        .await?
                        .into_iter()
                        .map(|(s, _)| s)
                        .collect()
                } else if let Some(id) = id {
                    vec![id]
                } else {
                    bail!("give a dead letter's sequence or --all");
                };
                for seq in ids {
                    let p = d.replay(seq).await?;
                    println!(
                        "replayed {seq} as {} seq {} (event {})",
                        p.stream, p.seq, p.event_id
                    );
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use weir_service::durable::{DurablePublisher, Family};
    use weir_service::{ErrorCode, Problem};

    fn nats(url: &str) -> Nats {
        Nats {
            url: url.into(),
            creds: None,
        }
    }

    /// `weir events tail --from-seq` and `weir dlq list|show|replay --all`
    /// against a real nats-server.
    #[test]
    fn tail_and_dlq_against_nats() {
        let server = weir_testkit::NatsServer::start();
        let url = server.url().to_owned();
        let rt = crate::runtime().unwrap();
        let js = rt.block_on(async { server.nats().await.jetstream().clone() });
        rt.block_on(async {
            Family::new("cli").ensure(&js).await.unwrap();
            let p = DurablePublisher::new(js.clone());
            for i in 0..3 {
                p.publish_json("cli.e", &format!("e{i}"), &serde_json::json!({"i": i}))
                    .await
                    .unwrap();
            }
        });
        rt.block_on(tail(TailArgs {
            subject: "cli.>".into(),
            nats: nats(&url),
            from_seq: Some(2),
            from_time: None,
            count: Some(2),
        }))
        .unwrap();
        assert!(
            start_of(&TailArgs {
                subject: "x".into(),
                nats: nats(&url),
                from_seq: None,
                from_time: Some("yesterday".into()),
                count: None,
            })
            .is_err()
        );

        // A dead letter of cli.e seq 1, replayed with --all.
        let d = DeadLetters::new(js.clone());
        let seq = rt.block_on(async {
            d.ensure().await.unwrap();
            d.put(&DeadLetter {
                consumer: "svc_l".into(),
                family: "cli".into(),
                stream: "EVENTS_cli".into(),
                stream_seq: 1,
                subject: "cli.e".into(),
                headers: Default::default(),
                payload: "eyJpIjowfQ==".into(),
                event_id: Some("e0".into()),
                error: Problem::new(ErrorCode::JsonInvalid, "bad"),
                attempts: Vec::new(),
                dead_lettered_at: "2026-01-01T00:00:00Z".into(),
            })
            .await
            .unwrap()
        });
        dlq(DlqCmd::List {
            nats: nats(&url),
            limit: 10,
            json: false,
        })
        .unwrap();
        dlq(DlqCmd::Show {
            id: seq,
            nats: nats(&url),
        })
        .unwrap();
        dlq(DlqCmd::Replay {
            id: None,
            all: true,
            nats: nats(&url),
        })
        .unwrap();
        rt.block_on(async {
            assert!(d.list(10).await.unwrap().is_empty());
            let mut s = js.get_stream("EVENTS_cli").await.unwrap();
            assert_eq!(s.info().await.unwrap().state.messages, 4);
        });
        assert!(
            dlq(DlqCmd::Show {
                id: seq,
                nats: nats(&url),
            })
            .is_err()
        );
    }
}
