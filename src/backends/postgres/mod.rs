//! PostgreSQL: the admin connection that creates the role, databases and extensions,
//! and the logins that verify the result. tokio-postgres with rustls (AWS-LC) for TLS.
//!
//! One connection per database per provider process, opened on first use and shared
//! (tokio-postgres pipelines concurrent queries on one connection). Every identifier
//! is quoted; passwords are sent as SCRAM-SHA-256 verifiers computed here, so the
//! plaintext never reaches the server (or its statement log).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::secret::Secret;

/// libpq's `sslmode`: whether and how the admin connection uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, the certificate checked against the CA.
    VerifyCa,
    /// TLS, the certificate checked against the CA and the host name.
    VerifyFull,
}

impl SslMode {
    /// The modes' names, as libpq spells them.
    pub const ALL: [&'static str; 5] = ["disable", "prefer", "require", "verify-ca", "verify-full"];

    /// The mode named `s`, as libpq spells it.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// How to reach a PostgreSQL server as an administrator.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// The server's host name or address.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The admin role.
    pub user: String,
    /// The admin role's password.
    pub password: Secret,
    /// The database the admin session opens.
    pub database: String,
    /// Whether and how to use TLS.
    pub sslmode: SslMode,
    /// The CA certificate file for `verify-ca` and `verify-full`.
    pub sslrootcert: Option<PathBuf>,
    /// The longest wait for a connection.
    pub connect_timeout: Duration,
    /// The admin session's `statement_timeout`; the provider also gives up on a
    /// statement unanswered this long (plus [`GRACE`]), e.g. on a frozen server.
    pub statement_timeout: Duration,
    /// The admin session's `lock_timeout`: the longest wait for a lock.
    pub lock_timeout: Duration,
    /// Straight from where Terraform runs, or through the Services machine.
    pub route: crate::backends::tunnel::Route,
}

/// How long past `statement_timeout` the provider waits for the server's own cancel
/// before it gives up on the connection.
pub(crate) const GRACE: Duration = Duration::from_secs(5);

/// `"name"` with inner quotes doubled: safe for any name without NUL.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with inner quotes doubled (standard_conforming_strings is on since 9.1).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

mod error;
pub(crate) use error::PgError;
use error::{answer_or_cause, code_of, target};

mod login;
mod tls;
pub use login::verify_login;
pub use tls::Tls;

// ------------------------------------------------------------------------------ admin

struct Conn {
    client: Arc<Client>,
    task: JoinHandle<()>,
}

/// One database's slot: its connection once opened. Whoever opens it holds the slot,
/// so that two callers for one database share one connection, while connections to
/// different databases open side by side (a refresh checks every database at once).
type Slot = Arc<Mutex<Option<Conn>>>;

/// The administrator's connections, one per database, opened on first use.
pub struct PgAdmin {
    cfg: PgConfig,
    tls: std::sync::OnceLock<Tls>,
    conns: Mutex<HashMap<String, Slot>>,
    server: tokio::sync::OnceCell<ServerInfo>,
}

/// The oldest server the provider supports: CircleCI Server 2.17 runs 9.5.
pub(crate) const MIN_SERVER_VERSION: i32 = 90500;

/// What the admin connection learned about the server, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 90508 or 150004.
    pub version_num: i32,
    /// `server_version`, e.g. "9.5.8", for messages.
    pub version: String,
    /// `password_encryption` (10 and later; empty before).
    pub password_encryption: String,
}

/// What [`ServerInfo`] is read from, in one statement.
const SERVER_INFO_SQL: &str = "SELECT current_setting('server_version'), \
     current_setting('server_version_num'), current_setting('password_encryption')";

/// How a password is sent: always as a verifier, never in plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifierKind {
    /// `md5` + md5(password || username): the only form before 10.
    Md5,
    /// SCRAM-SHA-256 (10 and later, when `password_encryption` says so).
    Scram,
}

impl ServerInfo {
    /// The verifier the server stores for a new password: MD5 before 10; from 10 on
    /// whatever `password_encryption` says (`on` meant md5 until 14).
    pub fn verifier_kind(&self) -> VerifierKind {
        if self.version_num < 100000 || self.password_encryption != "scram-sha-256" {
            VerifierKind::Md5
        } else {
            VerifierKind::Scram
        }
    }
}

/// The rows a simple query returned, every value as text (NULL as empty).
fn text_of(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Refuses a server older than [`MIN_SERVER_VERSION`], naming it and its version.
pub(crate) fn check_version(version_num: i32, version: &str, target: &str) -> Result<(), PgError> {
    if version_num < MIN_SERVER_VERSION {
        return Err(PgError::Unsupported {
            target: target.to_string(),
            version: version.to_string(),
        });
    }
    Ok(())
}

/// The verifier for `password` of `role`, of the given kind.
pub(crate) fn verifier(kind: VerifierKind, role: &str, password: &str) -> String {
    match kind {
        VerifierKind::Md5 => postgres_protocol::password::md5(password.as_bytes(), role),
        VerifierKind::Scram => postgres_protocol::password::scram_sha_256(password.as_bytes()),
    }
}

impl fmt::Debug for PgAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgAdmin").field("cfg", &self.cfg).finish()
    }
}

impl PgAdmin {
    /// A client for the server in `cfg`; it connects on first use.
    pub fn new(cfg: PgConfig) -> Self {
        PgAdmin {
            cfg,
            tls: std::sync::OnceLock::new(),
            conns: Mutex::new(HashMap::new()),
            server: tokio::sync::OnceCell::new(),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &PgConfig {
        &self.cfg
    }

    /// `user@host:port`, for messages.
    pub fn target(&self) -> String {
        target(&self.cfg.user, &self.cfg.host, self.cfg.port)
    }

    /// The TLS settings for `sslmode` and the CA file, read once (a failure is not
    /// kept: reading again fails the same way, and errors need no `Clone`).
    pub fn tls(&self) -> Result<Tls, PgError> {
        if let Some(t) = self.tls.get() {
            return Ok(t.clone());
        }
        let t = Tls::new(self.cfg.sslmode, self.cfg.sslrootcert.as_deref())?
            .with_route(self.cfg.route.clone());
        Ok(self.tls.get_or_init(|| t).clone())
    }

    fn err(&self, what: &str, e: tokio_postgres::Error) -> PgError {
        let code = code_of(&e);
        let (mut answer, source) = answer_or_cause(e);
        let fmt = humantime::format_duration;
        if code == Some(SqlState::QUERY_CANCELED) {
            answer.push_str(&format!(
                " (the admin session's statement_timeout is {})",
                fmt(self.cfg.statement_timeout)
            ));
        } else if code == Some(SqlState::LOCK_NOT_AVAILABLE) {
            answer.push_str(&format!(
                " (waited for a lock longer than the admin session's lock_timeout, {})",
                fmt(self.cfg.lock_timeout)
            ));
        }
        PgError::Statement {
            what: what.to_string(),
            target: self.target(),
            answer,
            code,
            source,
        }
    }

    /// One statement on the admin connection to `db`, bounded: the server cancels it
    /// after `statement_timeout`; when even that answer does not come (a frozen
    /// server), the provider gives up [`GRACE`] later and drops the connection.
    async fn run<T>(
        &self,
        db: Option<&str>,
        what: &str,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, PgError> {
        let after = self.cfg.statement_timeout + GRACE;
        match tokio::time::timeout(after, f).await {
            Ok(r) => r.map_err(|e| self.err(what, e)),
            Err(_) => {
                let db = db.unwrap_or(&self.cfg.database);
                if let Some(c) = self.slot(db).await.lock().await.take() {
                    c.task.abort();
                }
                Err(PgError::Late {
                    what: what.to_string(),
                    target: self.target(),
                    after,
                })
            }
        }
    }

    /// The admin connection to `db` (the configured maintenance database when None).
    async fn client(&self, db: Option<&str>) -> Result<Arc<Client>, PgError> {
        let db = db.unwrap_or(&self.cfg.database).to_string();
        let slot = self.slot(&db).await;
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.client.is_closed() {
                return Ok(c.client.clone());
            }
        }
        let tls = self.tls()?;
        let c = &self.cfg;
        let (client, task) = tls
            .connect(
                &c.host,
                c.port,
                &c.user,
                c.password.expose(),
                &db,
                c.connect_timeout,
            )
            .await?;
        let limits = format!(
            "SET statement_timeout = {}; SET lock_timeout = {}",
            c.statement_timeout.as_millis().max(1),
            c.lock_timeout.as_millis().max(1)
        );
        match tokio::time::timeout(c.connect_timeout, client.batch_execute(&limits)).await {
            Ok(r) => r.map_err(|e| self.err("setting the session's timeouts", e))?,
            Err(_) => {
                task.abort();
                return Err(PgError::Timeout {
                    target: self.target(),
                    database: db,
                    after: c.connect_timeout,
                });
            }
        }
        let client = Arc::new(client);
        *slot = Some(Conn {
            client: client.clone(),
            task,
        });
        Ok(client)
    }

    /// The slot of `db`'s connection (made empty on first use). The map is locked only
    /// for this lookup, never while a connection opens.
    async fn slot(&self, db: &str) -> Slot {
        self.conns
            .lock()
            .await
            .entry(db.to_string())
            .or_default()
            .clone()
    }

    /// Closes our own connection to `db`, waiting until the server has seen it go.
    async fn close(&self, db: &str) {
        let conn = self.slot(db).await.lock().await.take();
        if let Some(Conn { client, task }) = conn {
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    /// Connects and logs in, to prove the settings work.
    pub async fn check(&self) -> Result<(), PgError> {
        self.client(None).await.map(|_| ())
    }

    /// Whether the role exists.
    pub async fn role_exists(&self, role: &str) -> Result<bool, PgError> {
        let c = self.client(None).await?;
        let rows = self
            .run(
                None,
                &format!("looking up role {role:?}"),
                c.query(
                    "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1",
                    &[&role],
                ),
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// The server's version and password settings (read once), or an error when the
    /// version is older than [`MIN_SERVER_VERSION`].
    pub async fn server_info(&self) -> Result<&ServerInfo, PgError> {
        self.server
            .get_or_try_init(|| async {
                let c = self.client(None).await?;
                // One round trip: every setting exists from 8.2 on (password_encryption
                // is a boolean before 10, and not used there).
                let rows = self
                    .run(
                        None,
                        "reading the server's version and settings",
                        c.simple_query(SERVER_INFO_SQL),
                    )
                    .await?;
                let row = text_of(&rows).into_iter().next().unwrap_or_default();
                let field = |i: usize| row.get(i).cloned().unwrap_or_default();
                let version = field(0);
                let version_num = field(1).parse().unwrap_or(0);
                check_version(version_num, &version, &self.target())?;
                let password_encryption = if version_num >= 100000 {
                    field(2)
                } else {
                    String::new()
                };
                log::debug!(
                    "PostgreSQL {version} at {} (password_encryption {password_encryption:?})",
                    self.target()
                );
                Ok(ServerInfo {
                    version_num,
                    version,
                    password_encryption,
                })
            })
            .await
    }

    /// Creates the role (LOGIN) or, when it exists, makes sure it can log in; either
    /// way its password becomes `password`, sent as the verifier the server stores.
    pub async fn ensure_role(&self, role: &str, password: &str) -> Result<bool, PgError> {
        let kind = self.server_info().await?.verifier_kind();
        let exists = self.role_exists(role).await?;
        let verifier = verifier(kind, role, password);
        let sql = format!(
            "{} ROLE {} WITH LOGIN PASSWORD {}",
            if exists { "ALTER" } else { "CREATE" },
            quote_ident(role),
            quote_literal(&verifier)
        );
        let c = self.client(None).await?;
        let what = format!(
            "{} role {role:?}",
            if exists { "updating" } else { "creating" }
        );
        self.run(None, &what, c.batch_execute(&sql)).await?;
        Ok(!exists)
    }

    /// Which of `names` exist, with their owners.
    pub async fn databases(&self, names: &[String]) -> Result<HashMap<String, String>, PgError> {
        let c = self.client(None).await?;
        let rows = self
            .run(
                None,
                "listing databases",
                c.query(
                    "SELECT datname::text, pg_catalog.pg_get_userbyid(datdba)::text FROM pg_catalog.pg_database WHERE datname = ANY($1)",
                    &[&names],
                ),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// CREATE DATABASE from template0 (so parallel creates never contend for template1).
    pub async fn create_database(&self, name: &str, owner: &str) -> Result<(), PgError> {
        let c = self.client(None).await?;
        let sql = format!(
            "CREATE DATABASE {} OWNER {} TEMPLATE template0",
            quote_ident(name),
            quote_ident(owner)
        );
        self.run(
            None,
            &format!("creating database {name:?}"),
            c.batch_execute(&sql),
        )
        .await
    }

    /// Makes `owner` the owner of database `name`.
    pub async fn set_owner(&self, name: &str, owner: &str) -> Result<(), PgError> {
        let c = self.client(None).await?;
        let sql = format!(
            "ALTER DATABASE {} OWNER TO {}",
            quote_ident(name),
            quote_ident(owner)
        );
        self.run(
            None,
            &format!("changing the owner of database {name:?}"),
            c.batch_execute(&sql),
        )
        .await
    }

    /// CREATE EXTENSION IF NOT EXISTS for each, connected to `db`.
    pub async fn ensure_extensions(&self, db: &str, extensions: &[String]) -> Result<(), PgError> {
        if extensions.is_empty() {
            return Ok(());
        }
        let c = self.client(Some(db)).await?;
        for e in extensions {
            let sql = format!("CREATE EXTENSION IF NOT EXISTS {}", quote_ident(e));
            let what = format!("creating extension {e:?} in database {db:?}");
            self.run(Some(db), &what, c.batch_execute(&sql)).await?;
        }
        Ok(())
    }

    /// The extensions installed in database `db`.
    pub async fn installed_extensions(&self, db: &str) -> Result<Vec<String>, PgError> {
        let c = self.client(Some(db)).await?;
        let rows = self
            .run(
                Some(db),
                &format!("listing extensions of database {db:?}"),
                c.query("SELECT extname::text FROM pg_catalog.pg_extension", &[]),
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The rows of a read-only `sql` in `db`, every value as text (NULL as empty).
    pub async fn text_rows(
        &self,
        db: &str,
        what: &str,
        sql: &str,
    ) -> Result<Vec<Vec<String>>, PgError> {
        let c = self.client(Some(db)).await?;
        let msgs = self.run(Some(db), what, c.simple_query(sql)).await?;
        Ok(text_of(&msgs))
    }

    /// Other sessions connected to `db` (ours is closed first).
    pub async fn live_connections(&self, db: &str) -> Result<i64, PgError> {
        self.close(db).await;
        let c = self.client(None).await?;
        let row = self
            .run(
                None,
                &format!("counting connections to database {db:?}"),
                c.query_one(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_catalog.pg_backend_pid()",
                    &[&db],
                ),
            )
            .await?;
        Ok(row.get(0))
    }

    /// Drops database `db`, ending its sessions first.
    pub async fn drop_database(&self, db: &str) -> Result<(), PgError> {
        self.close(db).await;
        let c = self.client(None).await?;
        let sql = format!("DROP DATABASE IF EXISTS {}", quote_ident(db));
        self.run(
            None,
            &format!("dropping database {db:?}"),
            c.batch_execute(&sql),
        )
        .await
    }

    /// Drops role `role`.
    pub async fn drop_role(&self, role: &str) -> Result<(), PgError> {
        let c = self.client(None).await?;
        let sql = format!("DROP ROLE IF EXISTS {}", quote_ident(role));
        self.run(
            None,
            &format!("dropping role {role:?}"),
            c.batch_execute(&sql),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(
            quote_ident("x\"; DROP DATABASE circle; --"),
            "\"x\"\"; DROP DATABASE circle; --\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn servers_before_9_5_are_refused_by_name_and_version() {
        assert!(check_version(90508, "9.5.8", "a@db:5432").is_ok());
        assert!(check_version(150004, "15.4", "a@db:5432").is_ok());
        let e = check_version(90425, "9.4.25", "admin@db.internal:5432").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("9.4.25") && m.contains("admin@db.internal:5432"),
            "{m}"
        );
        assert!(m.contains("9.5 or later"), "{m}");
    }

    #[test]
    fn verifier_follows_version_and_password_encryption() {
        let info = |n: i32, enc: &str| ServerInfo {
            version_num: n,
            version: n.to_string(),
            password_encryption: enc.into(),
        };
        // 9.5: md5 only (password_encryption is a boolean there and not read).
        assert_eq!(info(90508, "").verifier_kind(), VerifierKind::Md5);
        // 10: what password_encryption says; "on" meant md5.
        assert_eq!(info(100023, "md5").verifier_kind(), VerifierKind::Md5);
        assert_eq!(info(100023, "on").verifier_kind(), VerifierKind::Md5);
        assert_eq!(
            info(100023, "scram-sha-256").verifier_kind(),
            VerifierKind::Scram
        );
        // 15: scram by default, md5 when configured.
        assert_eq!(
            info(150004, "scram-sha-256").verifier_kind(),
            VerifierKind::Scram
        );
        assert_eq!(info(150004, "md5").verifier_kind(), VerifierKind::Md5);
        // The md5 form PostgreSQL documents: "md5" + md5(password || username).
        let v = verifier(VerifierKind::Md5, "circle", "secret");
        // (echo -n secretcircle | md5sum)
        assert_eq!(v, "md5fdbb047a2ccd45fbd3209b55f9607d04");
        let s = verifier(VerifierKind::Scram, "circle", "secret");
        assert!(s.starts_with("SCRAM-SHA-256$4096:"), "{s}");
    }

    #[test]
    fn sslmodes() {
        for m in SslMode::ALL {
            assert!(SslMode::parse(m).is_some());
        }
        assert!(SslMode::parse("allow-ish").is_none());
        assert!(Tls::new(SslMode::VerifyFull, None).is_err());
        assert!(Tls::new(SslMode::Require, None).is_ok());
    }
}
