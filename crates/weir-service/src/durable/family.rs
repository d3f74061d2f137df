//! Event families: one JetStream stream per family.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::error::{DurableError, setup};

/// A family of events (`orders` → subjects `orders.>`), stored in the
/// stream `EVENTS_orders`. Declared idempotently by every publisher and
/// consumer that needs it, so no deploy order is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    name: String,
    /// Publishes with the same `Nats-Msg-Id` inside this window are stored
    /// once (the broker's publish-side dedupe).
    pub duplicate_window: Duration,
    /// How long events are kept (zero: forever, until `max_bytes`).
    pub max_age: Duration,
    /// Size bound of the stream (-1: none).
    pub max_bytes: i64,
    /// File or memory storage.
    pub storage: stream::StorageType,
}

impl Family {
    /// A family with a two-minute duplicate window, kept for seven days.
    pub fn new(name: impl Into<String>) -> Family {
        Family {
            name: name.into(),
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: -1,
            storage: stream::StorageType::File,
        }
    }

    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }

    pub fn max_age(mut self, d: Duration) -> Self {
        self.max_age = d;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream's name.
    pub fn stream_name(&self) -> String {
        format!("EVENTS_{}", self.name)
    }

    /// The subjects the stream captures.
    pub fn subjects(&self) -> String {
        format!("{}.>", self.name)
    }

    fn validate(&self) -> Result<(), DurableError> {
        if crate::server::valid_name(&self.name) {
            Ok(())
        } else {
            Err(DurableError::Invalid(format!(
                "family `{}` must match [A-Za-z0-9_-]+",
                self.name
            )))
        }
    }

    /// Creates the stream, or updates its limits to this declaration.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), DurableError> {
        self.validate()?;
        js.create_or_update_stream(stream::Config {
            name: self.stream_name(),
            subjects: vec![self.subjects()],
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            storage: self.storage,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(setup)?;
        Ok(())
    }
}
