//! What can go wrong outside a step's own action (whose failures are
//! [`Problem`](weir_layer::problem::Problem)s recorded in the step log, not
//! errors of the orchestrator).

/// An orchestrator, store or registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// PostgreSQL failed or could not be reached; the operation may be retried.
    #[error("database error: {0}")]
    Db(String),
    /// The saga tables do not exist: `weir migrate up --set saga` (or
    /// [`SagaStore::migrate`](crate::SagaStore::migrate)) was not run.
    #[error("the saga tables are missing: run `weir migrate up --set saga` ({0})")]
    NotMigrated(String),
    /// The database URL did not parse.
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// No definition with this name is registered.
    #[error("no saga named {0:?} is registered")]
    UnknownSaga(String),
    /// The saga is known, but not in the version an instance started with.
    #[error("saga {name:?} version {version} is not registered")]
    UnknownVersion { name: String, version: u32 },
    /// A definition was registered twice under the same name and version.
    #[error("saga {name:?} version {version} is registered twice")]
    DuplicateVersion { name: String, version: u32 },
    /// A definition is malformed (duplicate step names, bad characters, …).
    #[error("invalid saga definition: {0}")]
    InvalidDefinition(String),
    /// A caller-supplied saga id or input was refused.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// `start_with_id` named an id that already belongs to another saga.
    #[error("saga instance {id} already exists for saga {existing:?}")]
    IdConflict { id: String, existing: String },
    /// No instance with this id.
    #[error("no saga instance {0}")]
    NotFound(String),
    /// The instance is completed or compensated: nothing to retry.
    #[error("saga instance {id} is {status}: nothing to retry")]
    Terminal { id: String, status: String },
    /// Another orchestrator took over the instance (our lease expired or an
    /// operator retried it); this process stopped working on it.
    #[error("lease on saga instance {0} was lost")]
    LeaseLost(String),
    /// Stored data did not decode (hand-edited rows, or a newer schema).
    #[error("corrupt saga row {id}: {message}")]
    Corrupt { id: String, message: String },
    /// `wait` gave up before the instance reached a terminal status.
    #[error("saga instance {0} did not finish in time")]
    WaitTimeout(String),
}

impl SagaError {
    /// Whether retrying the same call later could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, SagaError::Db(_) | SagaError::WaitTimeout(_))
    }
}

pub(crate) fn db(e: tokio_postgres::Error) -> SagaError {
    if let Some(d) = e.as_db_error()
        && *d.code() == tokio_postgres::error::SqlState::UNDEFINED_TABLE
        && d.message().contains("weir_saga")
    {
        return SagaError::NotMigrated(d.message().to_owned());
    }
    SagaError::Db(match (e.as_db_error(), std::error::Error::source(&e)) {
        (Some(d), _) => format!("{}: {}", d.code().code(), d.message()),
        (None, Some(s)) => format!("{e}: {s}"),
        (None, None) => e.to_string(),
    })
}
