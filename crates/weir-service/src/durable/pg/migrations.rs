//! The `events` migration set: the inbox and the outbox.

use weir_layer::migrate::{Migration, MigrationSet};

/// `weir migrate --set events`: `weir_inbox` and `weir_outbox`, versioned
/// in `weir_events_migrations`.
pub const MIGRATIONS: MigrationSet = MigrationSet {
    name: "events",
    table: "weir_events_migrations",
    migrations: &[Migration {
        version: 1,
        name: "inbox_outbox",
        up: "CREATE TABLE weir_inbox (
                consumer text NOT NULL,
                event_id text NOT NULL,
                handled_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (consumer, event_id)
            );
            CREATE INDEX weir_inbox_handled_at ON weir_inbox (handled_at);
            CREATE TABLE weir_outbox (
                seq bigserial PRIMARY KEY,
                id text NOT NULL UNIQUE,
                subject text NOT NULL,
                headers text NOT NULL DEFAULT '{}',
                payload bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            );",
        down: "DROP TABLE weir_outbox; DROP TABLE weir_inbox;",
    }],
};
