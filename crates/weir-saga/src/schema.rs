//! The saga tables, as a migration set of their own (`weir migrate up
//! --set saga`): they version independently of the production layer's.
//!
//! Times are milliseconds since the epoch taken from the *database's*
//! clock, so leases compare times from one clock no matter how far the
//! orchestrators' hosts drift. JSON is kept as `TEXT`: the orchestrator
//! only stores and reloads it, and `TEXT` keeps its exact form.

use weir_layer::migrate::{Migration, MigrationSet};

/// The saga migrations, oldest first. Append only.
pub const SAGA_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "saga_instances_and_steps",
    // `step`: running — index of the next step to run forward;
    // compensating — how many completed steps remain to be compensated
    // (the next one is `step - 1`). `epoch` is raised by `weir saga retry`,
    // which restarts the failure count of the current step.
    up: "CREATE TABLE weir_saga_instances (
            id TEXT PRIMARY KEY,
            saga TEXT NOT NULL,
            version INTEGER NOT NULL,
            input TEXT NOT NULL,
            state TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('running', 'compensating', 'completed', 'compensated', 'failed')),
            step INTEGER NOT NULL DEFAULT 0,
            epoch INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            note TEXT,
            lease_owner TEXT,
            lease_until BIGINT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL
        );
        CREATE INDEX weir_saga_instances_claim ON weir_saga_instances (status, lease_until);
        CREATE INDEX weir_saga_instances_saga ON weir_saga_instances (saga, status);
        CREATE TABLE weir_saga_steps (
            id BIGSERIAL PRIMARY KEY,
            saga_id TEXT NOT NULL REFERENCES weir_saga_instances (id) ON DELETE CASCADE,
            step_index INTEGER NOT NULL,
            step TEXT NOT NULL,
            phase TEXT NOT NULL CHECK (phase IN ('forward', 'compensate')),
            epoch INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            status TEXT NOT NULL CHECK (status IN
                ('started', 'succeeded', 'failed', 'interrupted')),
            owner TEXT NOT NULL,
            started_at BIGINT NOT NULL,
            finished_at BIGINT,
            output TEXT,
            error TEXT
        );
        CREATE INDEX weir_saga_steps_saga ON weir_saga_steps (saga_id, step_index, phase)",
    down: "DROP TABLE weir_saga_steps; DROP TABLE weir_saga_instances",
}];

/// The set `weir migrate` runs for sagas.
pub const MIGRATIONS: MigrationSet = MigrationSet {
    name: "saga",
    table: "weir_saga_migrations",
    migrations: SAGA_MIGRATIONS,
};
