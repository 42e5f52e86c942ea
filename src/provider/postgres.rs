//! The `postgres` block: the administrator connection, with libpq's environment
//! variables as fallbacks.

use std::time::Duration;

use crate::backends::postgres::{PgConfig, SslMode};
use crate::plugin::{AttrPath, Attribute, Block, Diagnostic, Diagnostics, Type, Value};
use crate::resources::validate;
use crate::secret::Secret;

use super::{env_or, expand_home, POSTGRES};

/// The longest PostgreSQL connect_timeout accepted.
const MAX_CONNECT: Duration = Duration::from_secs(3600);

pub(super) fn block() -> Block {
    Block::new()
        .description(
            "The PostgreSQL administrator connection used to create the CircleCI role, databases and \
             extensions. Nothing connects until a resource needs it. Each attribute falls back to the \
             libpq environment variable named in its description.",
        )
        .attr(super::via_attr())
        .attr(Attribute::new("host", Type::String).optional().description("Server address. Default: env `PGHOST`."))
        .attr(Attribute::new("port", Type::Number).optional().description("Port. Default: env `PGPORT`, else `5432`."))
        .attr(Attribute::new("username", Type::String).optional().description(
            "Administrator role (needs CREATEROLE and CREATEDB, or superuser). Default: env `PGUSER`, else `postgres`.",
        ))
        .attr(Attribute::new("password", Type::String).optional().sensitive().description(
            "Administrator password. Default: env `PGPASSWORD`.",
        ))
        .attr(Attribute::new("database", Type::String).optional().description(
            "Maintenance database to connect to. Default: env `PGDATABASE`, else `postgres`.",
        ))
        .attr(Attribute::new("sslmode", Type::String).optional().description(
            "`disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`, with libpq's meanings: \
             `prefer` and `require` do not check the certificate; `verify-ca` checks it was signed by \
             `sslrootcert`; `verify-full` also checks the host name. Default: env `PGSSLMODE`.",
        ))
        .attr(Attribute::new("sslrootcert", Type::String).optional().description(
            "CA certificate file (PEM) for `verify-ca` and `verify-full`. Default: env `PGSSLROOTCERT`.",
        ))
        .attr(Attribute::new("connect_timeout", Type::String).optional().description(
            "Time allowed to connect, e.g. `15s` (default). Default: env `PGCONNECT_TIMEOUT` (seconds).",
        ))
        .attr(super::deadline_attr(
            "statement_timeout",
            "The admin session's `statement_timeout`: time allowed for each statement (CREATE DATABASE, \
             CREATE EXTENSION, role changes). The provider also gives up 5 seconds after it on a server that \
             does not answer at all",
            "2m",
        ))
        .attr(super::deadline_attr(
            "lock_timeout",
            "The admin session's `lock_timeout`: the longest wait for a lock another session holds",
            "30s",
        ))
}

fn pg_path(attr: &str) -> AttrPath {
    AttrPath::root(POSTGRES).attr(attr)
}

pub(super) fn validate(b: &Value, diags: &mut Diagnostics) {
    if b.is_null() || b.is_unknown() {
        return;
    }
    if let Some(h) = b.get("host").as_str() {
        validate::host(h, pg_path("host"), diags);
    }
    validate::port(b.get("port"), pg_path("port"), diags);
    if let Some(m) = b.get("sslmode").as_str() {
        if SslMode::parse(m).is_none() {
            diags.attr_error(
                pg_path("sslmode"),
                "Invalid sslmode",
                format!("{m:?} is not one of {}", SslMode::ALL.join(", ")),
            );
        }
    }
    if let Some(t) = b.get("connect_timeout").as_str() {
        validate::duration_at_most(t, MAX_CONNECT, pg_path("connect_timeout"), diags);
    }
    super::validate_deadlines(b, POSTGRES, &["statement_timeout", "lock_timeout"], diags);
    // A weak sslmode with a password: the admin password, and the role passwords the
    // provider sets, may go to a server nobody checked.
    let mode = b.get("sslmode").as_str().unwrap_or("prefer");
    let password = !b.get("password").is_null() || std::env::var("PGPASSWORD").is_ok();
    if mode != "verify-full" && password && !b.get("sslmode").is_unknown() {
        diags.push(
            Diagnostic::warning(
                "PostgreSQL server identity not checked",
                format!(
                    "sslmode = {mode:?}{}: the admin password and the CircleCI role's password verifier \
                     are sent without checking that the server is the one you meant ({}). Use sslmode = \
                     \"verify-full\" with sslrootcert.",
                    if b.get("sslmode").is_null() { " (the default)" } else { "" },
                    match mode {
                        "disable" => "and in plain text",
                        "verify-ca" => "the certificate's host name is not checked",
                        _ => "any certificate is accepted, or none",
                    }
                ),
            )
            .at(pg_path("sslmode")),
        );
    }
    if matches!(b.get("sslmode").as_str(), Some("verify-ca" | "verify-full"))
        && b.get("sslrootcert").is_null()
        && std::env::var("PGSSLROOTCERT").is_err()
    {
        diags.attr_error(
            pg_path("sslrootcert"),
            "CA certificate needed",
            "sslmode verify-ca and verify-full check the server's certificate against sslrootcert; set it \
             to the PEM file of the CA that signed the server's certificate",
        );
    }
}

pub(super) fn build(b: &Value) -> Result<PgConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let host = env_or(b.get("host"), "PGHOST").unwrap_or_default();
    if host.is_empty() {
        diags.attr_error(
            pg_path("host"),
            "PostgreSQL address missing",
            "set postgres.host or PGHOST",
        );
    } else {
        validate::host(&host, pg_path("host"), &mut diags);
    }
    let port = match b.get("port") {
        Value::Null => match std::env::var("PGPORT").ok().filter(|s| !s.is_empty()) {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).unwrap_or_else(|| {
                diags.attr_error(
                    pg_path("port"),
                    "Invalid port",
                    format!("PGPORT={p:?} is not a port number"),
                );
                5432
            }),
            None => 5432,
        },
        v => validate::port(v, pg_path("port"), &mut diags).unwrap_or(5432),
    };
    let sslmode_s = env_or(b.get("sslmode"), "PGSSLMODE").unwrap_or_else(|| "prefer".into());
    let sslmode = SslMode::parse(&sslmode_s).unwrap_or_else(|| {
        diags.attr_error(
            pg_path("sslmode"),
            "Invalid sslmode",
            format!("{sslmode_s:?} is not one of {}", SslMode::ALL.join(", ")),
        );
        SslMode::Prefer
    });
    let connect_timeout = match b.get("connect_timeout").as_str() {
        Some(t) => {
            validate::duration_at_most(t, MAX_CONNECT, pg_path("connect_timeout"), &mut diags)
        }
        None => std::env::var("PGCONNECT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
    }
    .unwrap_or(Duration::from_secs(15));
    let statement_timeout = super::deadline(
        b,
        POSTGRES,
        "statement_timeout",
        Duration::from_secs(120),
        &mut diags,
    );
    let lock_timeout = super::deadline(
        b,
        POSTGRES,
        "lock_timeout",
        Duration::from_secs(30),
        &mut diags,
    );
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(PgConfig {
        host,
        port,
        user: env_or(b.get("username"), "PGUSER").unwrap_or_else(|| "postgres".into()),
        password: Secret::new(env_or(b.get("password"), "PGPASSWORD").unwrap_or_default()),
        database: env_or(b.get("database"), "PGDATABASE").unwrap_or_else(|| "postgres".into()),
        sslmode,
        sslrootcert: env_or(b.get("sslrootcert"), "PGSSLROOTCERT").map(|p| expand_home(&p)),
        connect_timeout,
        statement_timeout,
        lock_timeout,
        route: Default::default(),
    })
}
