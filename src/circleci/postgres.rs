//! "Setting up External PostgreSQL" and its troubleshooting part, as data.

use std::collections::BTreeMap;

use super::envfile::{self, Style};
use crate::secret::Secret;

pub(crate) const DEFAULT_PATH: &str = "/etc/circleconfig/shared/postgresql";
pub(crate) const DEFAULT_PORT: u16 = 5432;
/// The runbook: "We advise not changing the username".
pub(crate) const DEFAULT_USER: &str = "circle";

/// The nine databases of "Confirming Tables".
pub const DEFAULT_DATABASES: [&str; 9] = [
    "circle",
    "contexts",
    "conductor_production",
    "contexts_service_production",
    "cron_service_production",
    "domain",
    "federations",
    "permissions",
    "vms",
];

/// Every database needs uuid-ossp (the runbook writes uuid-osspl, uuid-ossf and
/// uuid-oss; none of those exist); `circle` also needs pgcrypto.
pub(crate) fn default_extensions() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        ("*".to_string(), vec!["uuid-ossp".to_string()]),
        (
            "circle".to_string(),
            vec!["uuid-ossp".to_string(), "pgcrypto".to_string()],
        ),
    ])
}

/// The runbook's misspellings of uuid-ossp, refused with a pointer to the real name.
pub(crate) fn misspelled_extension(name: &str) -> Option<&'static str> {
    matches!(
        name,
        "uuid-osspl" | "uuid-ossf" | "uuid-oss" | "uuid_ossp" | "uuidossp"
    )
    .then_some("uuid-ossp")
}

/// PostgreSQL identifiers: 1 to 63 bytes (NAMEDATALEN - 1), no NUL. Anything else is
/// allowed because every identifier is quoted.
pub(crate) fn check_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("must not be empty".into())
    } else if name.len() > 63 {
        Err(format!(
            "is {} bytes long; PostgreSQL names are at most 63 bytes",
            name.len()
        ))
    } else if name.contains('\0') {
        Err("must not contain a NUL character".into())
    } else {
        Ok(())
    }
}

/// The extensions each database gets: `extensions["*"]` plus its own entry, in order,
/// without repeats.
pub(crate) fn extensions_for(db: &str, extensions: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in ["*", db] {
        for e in extensions.get(key).into_iter().flatten() {
            if !out.contains(e) {
                out.push(e.clone());
            }
        }
    }
    out
}

/// The databases to manage: the list, plus one named after the user when asked
/// (the runbook's fix for `FATAL: database "circle" does not exist`).
pub(crate) fn all_databases(
    databases: &[String],
    user: &str,
    create_user_database: bool,
) -> Vec<String> {
    let mut out = databases.to_vec();
    if create_user_database && !out.iter().any(|d| d == user) {
        out.push(user.to_string());
    }
    out
}

/// The file /etc/circleconfig/shared/postgresql.
pub(crate) fn render(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
) -> Result<String, envfile::EnvFileError> {
    let port = port.to_string();
    envfile::render(
        &[
            ("POSTGRES_HOST", host),
            ("POSTGRES_PORT", &port),
            ("POSTGRES_PASSWORD", password),
            ("POSTGRES_USER", user),
        ],
        Style::Export,
    )
}

/// What the file says (Debug hides the password).
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct PostgresFile {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
}

pub(crate) fn parse(text: &str) -> Result<PostgresFile, String> {
    let a = envfile::parse(text).map_err(|e| e.to_string())?;
    let get = |k: &str| envfile::lookup(&a, k).map(str::to_string);
    let host = get("POSTGRES_HOST").ok_or("POSTGRES_HOST is not set in the file")?;
    let port = match get("POSTGRES_PORT") {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("POSTGRES_PORT {p:?} is not a port number"))?,
        None => DEFAULT_PORT,
    };
    Ok(PostgresFile {
        host,
        port,
        user: get("POSTGRES_USER").unwrap_or_else(|| DEFAULT_USER.to_string()),
        password: Secret::new(
            get("POSTGRES_PASSWORD").ok_or("POSTGRES_PASSWORD is not set in the file")?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_per_database() {
        let e = default_extensions();
        assert_eq!(extensions_for("circle", &e), ["uuid-ossp", "pgcrypto"]);
        assert_eq!(extensions_for("vms", &e), ["uuid-ossp"]);
    }

    #[test]
    fn user_database_is_added_once() {
        let dbs: Vec<String> = DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect();
        assert_eq!(all_databases(&dbs, "circle", true).len(), 9);
        assert_eq!(all_databases(&dbs, "other", true).len(), 10);
        assert_eq!(all_databases(&dbs, "other", false).len(), 9);
    }

    #[test]
    fn identifiers() {
        assert!(check_identifier("x\"; DROP DATABASE circle; --").is_ok());
        assert!(check_identifier(&"a".repeat(63)).is_ok());
        assert!(check_identifier(&"a".repeat(64)).is_err());
        assert!(check_identifier("").is_err());
        assert!(check_identifier("a\0b").is_err());
        assert_eq!(misspelled_extension("uuid-osspl"), Some("uuid-ossp"));
        assert_eq!(misspelled_extension("uuid-ossp"), None);
    }

    #[test]
    fn file_round_trip_keeps_hostile_passwords() {
        let pw = "p'a\"s$s;w `o` rd ünï";
        let text = render("db.internal", 5433, "circle", pw).unwrap();
        let f = parse(&text).unwrap();
        assert_eq!(
            f,
            PostgresFile {
                host: "db.internal".into(),
                port: 5433,
                user: "circle".into(),
                password: pw.into()
            }
        );
        assert!(!format!("{f:?}").contains("rd ünï"));
    }
}
