//! What can go wrong talking to PostgreSQL, and how it reads in a message.

use std::time::Duration;

use tokio_postgres::error::SqlState;

/// What failed, where. Never contains a password. Classified by variant and SQLSTATE,
/// never by message text.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server could not be reached, refused the login, or its certificate was not
    /// trusted (`cert`). `answer` is what the server said, when it said no; otherwise the
    /// client's error is the source.
    #[error("connecting to {target} (database {database:?}){}{}", colon(.answer), if *.cert { " (is the CA certificate the one that signed the server's certificate, and the host the name in it?)" } else { "" })]
    Connect {
        target: String,
        database: String,
        answer: String,
        code: Option<SqlState>,
        cert: bool,
        #[source]
        source: Option<Cause>,
    },
    #[error("connecting to {target} (database {database:?}): no answer within {}", humantime::format_duration(*.after))]
    Timeout {
        target: String,
        database: String,
        after: Duration,
    },
    /// A statement got no answer within the deadline (the server may be frozen).
    #[error("{what} on {target}: no answer within {}", humantime::format_duration(*.after))]
    Late {
        what: String,
        target: String,
        after: Duration,
    },
    /// A statement failed once connected: the server's answer, or the client's error as
    /// the source when the server did not answer.
    #[error("{what} on {target}{}", colon(.answer))]
    Statement {
        what: String,
        target: String,
        answer: String,
        code: Option<SqlState>,
        #[source]
        source: Option<Cause>,
    },
    /// The server is older than the provider supports.
    #[error("PostgreSQL {version} at {target} is not supported: CircleCI Server 2.17 needs 9.5 or later, and so does this provider")]
    Unsupported { target: String, version: String },
    /// The TLS settings (sslmode, sslrootcert) cannot be used: `what` says which, the
    /// library's error (reading the file, parsing it) is the source.
    #[error("{what}")]
    TlsSettings {
        what: String,
        #[source]
        source: Option<Cause>,
    },
    /// A task working on one database ended without an answer (it panicked or was
    /// cancelled).
    #[error("a task working on the databases did not finish")]
    Task(#[source] tokio::task::JoinError),
    /// Several databases failed at once, one line each.
    #[error("{}", .0.iter().map(|e| crate::backends::chain(e)).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PgError>),
}

impl PgError {
    /// [`PgError::TlsSettings`] caused by the library's error `e`.
    pub(super) fn tls(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        PgError::TlsSettings {
            what: what.into(),
            source: Some(Box::new(e)),
        }
    }

    /// True when the server could not be reached or refused the connection.
    pub fn is_connect(&self) -> bool {
        match self {
            PgError::Connect { .. } | PgError::Timeout { .. } => true,
            PgError::Many(all) => all.iter().any(PgError::is_connect),
            _ => false,
        }
    }

    /// The SQLSTATE the server answered with, if it answered.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            PgError::Connect { code, .. } | PgError::Statement { code, .. } => code.as_ref(),
            _ => None,
        }
    }
}

/// The error that caused a [`PgError`], when the server did not answer.
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// ": text", or nothing when there is no text.
fn colon(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

pub(super) fn code_of(e: &tokio_postgres::Error) -> Option<SqlState> {
    e.code().cloned()
}

/// What the server answered (`FATAL: message (detail)`), or, when it did not answer,
/// nothing and the client's error as the cause.
pub(super) fn answer_or_cause(e: tokio_postgres::Error) -> (String, Option<Cause>) {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        return (m, None);
    }
    // "error connecting to server: Connection refused", through `chain`.
    (String::new(), Some(Box::new(e)))
}

pub(super) fn target(user: &str, host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("{user}@[{host}]:{port}")
    } else {
        format!("{user}@{host}:{port}")
    }
}
