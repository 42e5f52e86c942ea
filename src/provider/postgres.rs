//! The `postgres` block: the administrator connection, with libpq's environment
//! variables as fallbacks.

use std::time::Duration;

use crate::backends::postgres::{PgConfig, SslMode};
use crate::plugin::value::Number;
use crate::plugin::{AttrPath, Diagnostic, Diagnostics, Value};
use crate::resources::model::Known;
use crate::resources::validate::{self, Check};
use crate::secret::Secret;

use super::{deadline_doc, env_or, expand_home, Env, DEADLINE, POSTGRES, VIA_DOC};

/// The longest PostgreSQL connect_timeout accepted.
const MAX_CONNECT: Duration = Duration::from_secs(3600);

/// The block's description.
pub(super) const DOC: &str =
    "The PostgreSQL administrator connection used to create the CircleCI role, databases and \
     extensions. Nothing connects until a resource needs it. Each attribute falls back to the \
     libpq environment variable named in its description.";

/// `sslmode`: one of libpq's modes.
fn sslmode_check(m: &str) -> Result<(), String> {
    match SslMode::parse(m) {
        Some(_) => Ok(()),
        None => Err(format!("{m:?} is not one of {}", SslMode::ALL.join(", "))),
    }
}

crate::model! {
    /// The `postgres` block.
    #[derive(Default)]
    pub(crate) struct PostgresBlock {
        via_services_host: Known<bool> [optional, doc(VIA_DOC)],
        host: Known<String> [optional, check(Check::Host), doc("Server address. Default: env `PGHOST`.")],
        port: Known<Number> [optional, check(Check::Port), doc(
            "Port. Default: env `PGPORT`, else `5432`."
        )],
        username: Known<String> [optional, doc(
            "Administrator role (needs CREATEROLE and CREATEDB, or superuser). Default: env `PGUSER`, else `postgres`."
        )],
        password: Known<Secret> [optional, sensitive, doc(
            "Administrator password. Default: env `PGPASSWORD`."
        )],
        database: Known<String> [optional, doc(
            "Maintenance database to connect to. Default: env `PGDATABASE`, else `postgres`."
        )],
        sslmode: Known<String> [optional, check(Check::Text("Invalid sslmode", sslmode_check)), doc(
            "`disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`, with libpq's meanings: \
             `prefer` and `require` do not check the certificate; `verify-ca` checks it was signed by \
             `sslrootcert`; `verify-full` also checks the host name. Default: env `PGSSLMODE`."
        )],
        sslrootcert: Known<String> [optional, doc(
            "CA certificate file (PEM) for `verify-ca` and `verify-full`. Default: env `PGSSLROOTCERT`."
        )],
        connect_timeout: Known<String> [optional, check(Check::Duration {
            min_secs: 0,
            max_secs: MAX_CONNECT.as_secs()
        }), doc(
            "Time allowed to connect, e.g. `15s` (default). Default: env `PGCONNECT_TIMEOUT` (seconds)."
        )],
        statement_timeout: Known<String> [optional, check(DEADLINE), doc(deadline_doc(
            "The admin session's `statement_timeout`: time allowed for each statement (CREATE DATABASE, \
             CREATE EXTENSION, role changes). The provider also gives up 5 seconds after it on a server that \
             does not answer at all",
            "2m",
        ))],
        lock_timeout: Known<String> [optional, check(DEADLINE), doc(deadline_doc(
            "The admin session's `lock_timeout`: the longest wait for a lock another session holds",
            "30s",
        ))],
    }
}

fn pg_path(attr: &str) -> AttrPath {
    AttrPath::root(POSTGRES).attr(attr)
}

/// The rules across attributes (each attribute's own check is declared with it).
pub(super) fn validate(b: &PostgresBlock, env: Env<'_>, diags: &mut Diagnostics) {
    // A weak sslmode with a password: the admin password, and the role passwords the
    // provider sets, may go to a server nobody checked.
    let mode = b.sslmode.value().map_or("prefer", String::as_str);
    let password = !b.password.is_null() || env("PGPASSWORD").is_some();
    if mode != "verify-full" && password && !b.sslmode.is_unknown() {
        diags.push(
            Diagnostic::warning(
                "PostgreSQL server identity not checked",
                format!(
                    "sslmode = {mode:?}{}: the admin password and the CircleCI role's password verifier \
                     are sent without checking that the server is the one you meant ({}). Use sslmode = \
                     \"verify-full\" with sslrootcert.",
                    if b.sslmode.is_null() { " (the default)" } else { "" },
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
    if matches!(
        b.sslmode.value().map(String::as_str),
        Some("verify-ca" | "verify-full")
    ) && b.sslrootcert.is_null()
        && env("PGSSLROOTCERT").is_none()
    {
        diags.attr_error(
            pg_path("sslrootcert"),
            "CA certificate needed",
            "sslmode verify-ca and verify-full check the server's certificate against sslrootcert; set it \
             to the PEM file of the CA that signed the server's certificate",
        );
    }
}

/// The admin connection's settings from a wholly known block (an absent one is
/// empty), with libpq's variables of `env` as fallbacks.
pub(super) fn build(b: &PostgresBlock, env: Env<'_>) -> Result<PgConfig, Diagnostics> {
    let mut diags = Diagnostics::new();
    let host: String = env_or(&b.host, env, "PGHOST").unwrap_or_default();
    if host.is_empty() {
        diags.attr_error(
            pg_path("host"),
            "PostgreSQL address missing",
            "set postgres.host or PGHOST",
        );
    } else {
        validate::host(&host, pg_path("host"), &mut diags);
    }
    let port = match b.port.value() {
        None => match env("PGPORT").filter(|s| !s.is_empty()) {
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
        Some(n) => validate::port(&Value::Number(*n), pg_path("port"), &mut diags).unwrap_or(5432),
    };
    let sslmode_s: String = env_or(&b.sslmode, env, "PGSSLMODE").unwrap_or_else(|| "prefer".into());
    let sslmode = SslMode::parse(&sslmode_s).unwrap_or_else(|| {
        diags.attr_error(
            pg_path("sslmode"),
            "Invalid sslmode",
            format!("{sslmode_s:?} is not one of {}", SslMode::ALL.join(", ")),
        );
        SslMode::Prefer
    });
    let connect_timeout = match b.connect_timeout.value() {
        Some(t) => {
            validate::duration_at_most(t, MAX_CONNECT, pg_path("connect_timeout"), &mut diags)
        }
        None => env("PGCONNECT_TIMEOUT")
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
    }
    .unwrap_or(Duration::from_secs(15));
    let statement_timeout = super::deadline(
        &b.statement_timeout,
        pg_path("statement_timeout"),
        Duration::from_secs(120),
        &mut diags,
    );
    let lock_timeout = super::deadline(
        &b.lock_timeout,
        pg_path("lock_timeout"),
        Duration::from_secs(30),
        &mut diags,
    );
    if diags.has_errors() {
        return Err(diags);
    }
    Ok(PgConfig {
        host,
        port,
        user: env_or(&b.username, env, "PGUSER").unwrap_or_else(|| "postgres".into()),
        password: env_or(&b.password, env, "PGPASSWORD")
            .unwrap_or_else(|| Secret::new(String::new())),
        database: env_or(&b.database, env, "PGDATABASE").unwrap_or_else(|| "postgres".into()),
        sslmode,
        sslrootcert: env_or::<String>(&b.sslrootcert, env, "PGSSLROOTCERT")
            .map(|p| expand_home(&p)),
        connect_timeout,
        statement_timeout,
        lock_timeout,
        route: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_config::{block, config, env_of, s, NO_ENV};
    use super::*;
    use crate::provider::test_config::paths;

    fn validated(f: impl FnOnce(&mut PostgresBlock), env: Env<'_>) -> Diagnostics {
        super::super::validate(&config(|c| c.postgres = block(f)), env)
    }

    #[test]
    fn bad_values_name_their_attribute() {
        let d = validated(
            |b| {
                b.host = s("not a host");
                b.port = Known::Value(Number::Int(0));
                b.sslmode = s("maybe");
                b.connect_timeout = s("-1s");
                b.statement_timeout = s("2h");
            },
            NO_ENV,
        );
        assert_eq!(
            paths(&d),
            [
                "postgres.host",
                "postgres.port",
                "postgres.sslmode",
                "postgres.connect_timeout",
                "postgres.statement_timeout"
            ]
        );
        assert_eq!(
            d.0[2].detail,
            "\"maybe\" is not one of disable, prefer, require, verify-ca, verify-full"
        );
    }

    #[test]
    fn a_password_without_verify_full_warns_and_verify_needs_a_ca() {
        let d = validated(|b| b.password = s("pw"), NO_ENV);
        assert_eq!(paths(&d), ["postgres.sslmode"]);
        assert!(!d.has_errors());
        assert!(d.0[0].detail.contains("(the default)"), "{d}");
        let d = validated(|_| {}, &env_of(&[("PGPASSWORD", "pw")]));
        assert_eq!(paths(&d), ["postgres.sslmode"], "PGPASSWORD counts");
        let d = validated(
            |b| {
                b.password = Known::Unknown;
                b.sslmode = Known::Unknown;
            },
            NO_ENV,
        );
        assert!(d.is_empty(), "{d}");
        let d = validated(|b| b.sslmode = s("verify-full"), NO_ENV);
        assert_eq!(paths(&d), ["postgres.sslrootcert"]);
        assert!(d.has_errors());
        let d = validated(
            |b| b.sslmode = s("verify-full"),
            &env_of(&[("PGSSLROOTCERT", "/ca.pem")]),
        );
        assert!(d.is_empty(), "{d}");
    }

    #[test]
    fn unset_attributes_fall_back_to_libpq_variables() {
        let env = env_of(&[
            ("PGHOST", "db.internal"),
            ("PGPORT", "6543"),
            ("PGUSER", "admin"),
            ("PGPASSWORD", "pw"),
            ("PGDATABASE", "maint"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "7"),
        ]);
        let c = build(&PostgresBlock::default(), &env).unwrap();
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.user.as_str(),
                c.database.as_str()
            ),
            ("db.internal", 6543, "admin", "maint")
        );
        assert_eq!(c.password.expose(), "pw");
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.connect_timeout, Duration::from_secs(7));
        assert_eq!(c.statement_timeout, Duration::from_secs(120));
        assert_eq!(c.lock_timeout, Duration::from_secs(30));
        let b = PostgresBlock {
            host: s("10.0.0.9"),
            port: Known::Value(Number::Int(5433)),
            password: s("mine"),
            sslmode: s("disable"),
            lock_timeout: s("5s"),
            ..Default::default()
        };
        let c = build(&b, &env).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("10.0.0.9", 5433));
        assert_eq!(c.password.expose(), "mine");
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.lock_timeout, Duration::from_secs(5));
        let c = build(&b, NO_ENV).unwrap();
        assert_eq!(
            (c.user.as_str(), c.database.as_str()),
            ("postgres", "postgres")
        );
        let d = build(
            &PostgresBlock::default(),
            &env_of(&[("PGPORT", "x"), ("PGSSLMODE", "no")]),
        )
        .err()
        .unwrap();
        assert_eq!(
            paths(&d),
            ["postgres.host", "postgres.port", "postgres.sslmode"]
        );
    }
}
