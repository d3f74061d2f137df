//! Reading a family from a point: a sequence, a time, the start or now.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::error::{DurableError, read, setup};

/// Where a consumer or a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest event the stream still holds.
    #[default]
    All,
    /// Only events stored from now on.
    New,
    /// From this stream sequence on.
    Sequence(u64),
    /// From the first event stored at or after this time.
    Time(time::OffsetDateTime),
}

impl StartAt {
    pub(crate) fn policy(self) -> consumer::DeliverPolicy {
        match self {
            StartAt::All => consumer::DeliverPolicy::All,
            StartAt::New => consumer::DeliverPolicy::New,
            StartAt::Sequence(start_sequence) => {
                consumer::DeliverPolicy::ByStartSequence { start_sequence }
            }
            StartAt::Time(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
        }
    }
}

/// Reads the events of stream `stream` matching `filter` (empty: all) from
/// `start`, in order, through an ephemeral ordered consumer: nothing is
/// acknowledged and no durable state is left behind, so reading never
/// disturbs the durable listeners. The stream continues with new events as
/// they arrive; stop reading to stop.
pub async fn read_family(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
    start: StartAt,
) -> Result<BoxStream<'static, Result<jetstream::Message, DurableError>>, DurableError> {
    let s = js.get_stream(stream).await.map_err(setup)?;
    let c = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: start.policy(),
            ..Default::default()
        })
        .await
        .map_err(setup)?;
    let msgs = c.messages().await.map_err(read)?;
    Ok(msgs.map(|r| r.map_err(read)).boxed())
}

/// The name of the stream that stores `subject`.
pub async fn stream_of(js: &jetstream::Context, subject: &str) -> Result<String, DurableError> {
    js.stream_by_subject(subject)
        .await
        .map_err(|e| DurableError::Invalid(format!("no stream stores `{subject}`: {e}")))
}
