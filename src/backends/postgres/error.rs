//! What can go wrong talking to PostgreSQL, and how it reads in a message.

use std::time::Duration;

use tokio_postgres::error::SqlState;

/// What failed, where. Never contains a password. Classified by variant and SQLSTATE,
/// never by message text.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The server could not be reached, refused the login, or its certificate was not
    /// trusted (`cert`).
    #[error("connecting to {target} (database {database:?}): {detail}{}", if *.cert { " (is the CA certificate the one that signed the server's certificate, and the host the name in it?)" } else { "" })]
    Connect {
        target: String,
        database: String,
        detail: String,
        code: Option<SqlState>,
        cert: bool,
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
    /// A statement failed once connected.
    #[error("{what} on {target}: {detail}")]
    Statement {
        what: String,
        target: String,
        detail: String,
        code: Option<SqlState>,
    },
    /// The server is older than the provider supports.
    #[error("PostgreSQL {version} at {target} is not supported: CircleCI Server 2.17 needs 9.5 or later, and so does this provider")]
    Unsupported { target: String, version: String },
    /// The TLS settings (sslmode, sslrootcert) cannot be used.
    #[error("{0}")]
    TlsSettings(String),
    /// Several databases failed at once, one line each.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PgError>),
}

impl PgError {
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

pub(super) fn code_of(e: &tokio_postgres::Error) -> Option<SqlState> {
    e.code().cloned()
}

pub(super) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        return m;
    }
    // The source chain: "error connecting to server: Connection refused".
    crate::backends::chain(e)
}

pub(super) fn target(user: &str, host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("{user}@[{host}]:{port}")
    } else {
        format!("{user}@{host}:{port}")
    }
}
