//! MongoDB: the CircleCI user and its roles. A small client of our own (OP_MSG and
//! SCRAM over one connection to the primary), because no release of the official Rust
//! driver supports both MongoDB 3.6, which CircleCI Server 2.17 runs, and current
//! servers on a maintained line (3.1 and later refuse 3.6). The admin connection string
//! is a secret (it carries the admin password): it is never logged or put in an error;
//! messages name the hosts only.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use bson::{doc, Bson, Document};
use tokio::sync::Mutex;

use crate::backends::tunnel::Route;
use crate::circleci::migration::{Kind, TableStat};
use crate::secret::Secret;

mod scram;
pub(crate) mod uri;
mod wire;

use uri::ConnString;
pub(crate) use wire::Trust;
use wire::{Conn, TlsSettings, WireError, MIN_WIRE_VERSION};

/// What failed, on which hosts (never the connection string: it carries a password).
/// `code` is MongoDB's error code when the server answered a command with one.
#[derive(Debug, thiserror::Error)]
pub enum MongoError {
    #[error("the MongoDB connection string for {hosts} is not valid: {detail}")]
    BadUri { hosts: String, detail: String },
    #[error("MongoDB TLS settings for {hosts}: {detail}")]
    Tls { hosts: String, detail: String },
    #[error("no usable MongoDB primary at {hosts}: {}", .tried.join("; "))]
    NoPrimary { hosts: String, tried: Vec<String> },
    #[error("MongoDB at {host} speaks wire version {wire_version}, older than MongoDB 3.6 (wire version 6): CircleCI Server 2.17 and this provider need 3.6 or later")]
    Unsupported { host: String, wire_version: i32 },
    #[error("logging in as {user:?} to MongoDB at {hosts} with {mechanism} failed")]
    Auth {
        user: String,
        hosts: String,
        mechanism: &'static str,
        #[source]
        source: WireError,
    },
    #[error("{what} on MongoDB at {hosts}")]
    Command {
        what: String,
        hosts: String,
        code: Option<i32>,
        #[source]
        source: WireError,
    },
    #[error("{user:?} logged in to {hosts} but lacks {}", .missing.join(", "))]
    MissingRoles {
        user: String,
        hosts: String,
        missing: Vec<String>,
    },
}

/// A role: (role, database).
pub(crate) type Role = (String, String);

/// The MongoDB release a wire version stands for, for messages.
pub(crate) fn release_of(wire: i32) -> String {
    match wire {
        6 => "3.6".into(),
        7 => "4.0".into(),
        8 => "4.2".into(),
        9 => "4.4".into(),
        13 => "5.0".into(),
        17 => "6.0".into(),
        21 => "7.0".into(),
        25 => "8.0".into(),
        w => format!("a release of wire version {w}"),
    }
}

/// The hosts of a connection string, without credentials, for messages.
pub(crate) fn hosts_of(uri: &str) -> String {
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    // Nothing before the last `@` of the whole string: a password with an unencoded
    // `/` or `?` would otherwise end the "hosts" early and show its start.
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

/// An authenticated connection to the primary.
struct Session {
    conn: Conn,
    host: String,
}

fn host_text(h: &str, p: u16) -> String {
    if h.contains(':') {
        format!("[{h}]:{p}")
    } else {
        format!("{h}:{p}")
    }
}

/// Finds the primary among the seeds and the members they name.
async fn find_primary(
    cs: &ConnString,
    route: &Route,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    per_host: Duration,
) -> Result<(Conn, String), MongoError> {
    let sasl_user = cs
        .username
        .as_ref()
        .map(|u| format!("{}.{u}", cs.auth_source));
    let mut queue: VecDeque<(String, u16)> = cs.hosts.iter().cloned().collect();
    let mut seen = HashSet::new();
    let mut tried = Vec::new();
    while let Some((h, p)) = queue.pop_front() {
        let name = host_text(&h, p);
        if !seen.insert(name.clone()) {
            continue;
        }
        let open = Conn::open(route, (&h, p), tls, sasl_user.as_deref(), per_host);
        let c = match wire::within(per_host, open).await {
            Ok(c) => c,
            Err(e) => {
                tried.push(format!("{name}: {}", crate::backends::chain(&e)));
                continue;
            }
        };
        if c.max_wire_version() < MIN_WIRE_VERSION {
            return Err(MongoError::Unsupported {
                host: name,
                wire_version: c.max_wire_version(),
            });
        }
        let set = c.hello.get_str("setName").ok();
        if let Some(want) = &cs.replica_set {
            if set != Some(want.as_str()) {
                tried.push(format!(
                    "{name}: not a member of replica set {want:?} (it says {set:?})"
                ));
                continue;
            }
        }
        if c.is_primary() {
            return Ok((c, name));
        }
        tried.push(format!("{name}: not the primary"));
        // Members the server knows, the primary first: names only it may resolve.
        let mut next: Vec<String> = c
            .hello
            .get_str("primary")
            .map(str::to_string)
            .into_iter()
            .collect();
        if let Ok(hosts) = c.hello.get_array("hosts") {
            next.extend(hosts.iter().filter_map(|x| x.as_str().map(str::to_string)));
        }
        for n in next.into_iter().rev() {
            if let Ok(parsed) = uri::parse(&format!("mongodb://{n}")) {
                if let Some(hp) = parsed.hosts.into_iter().next() {
                    queue.push_front(hp);
                }
            }
        }
    }
    Err(MongoError::NoPrimary {
        hosts: cs.hosts_text(),
        tried,
    })
}

/// Connects to the primary of `uri` and logs in as its user (if it names one).
async fn connect(
    uri: &str,
    trust: Trust<'_>,
    timeout: Duration,
    route: &Route,
) -> Result<Session, MongoError> {
    let hosts = hosts_of(uri);
    let cs = uri::parse(uri).map_err(|detail| MongoError::BadUri {
        hosts: hosts.clone(),
        detail,
    })?;
    let tls = match trust {
        Trust::Ca(ca) => TlsSettings {
            enabled: cs.tls || ca.is_some() || cs.tls_ca_file.is_some(),
            ca_file: ca.cloned().or_else(|| cs.tls_ca_file.clone()),
            ca_pem: None,
            insecure: cs.tls_insecure,
            any_name: cs.tls_any_name,
        },
        Trust::Pem { origin, pem } => TlsSettings {
            enabled: cs.tls || cs.tls_ca_file.is_some(),
            ca_file: None,
            ca_pem: Some((origin.to_string(), pem.to_vec())),
            insecure: cs.tls_insecure,
            any_name: cs.tls_any_name,
        },
    };
    let tls = wire::client_tls(&tls).map_err(|detail| MongoError::Tls {
        hosts: hosts.clone(),
        detail,
    })?;
    let per_host = cs.connect_timeout.unwrap_or(timeout);
    let selection = cs.server_selection_timeout.unwrap_or(timeout);
    let (mut conn, host) =
        match tokio::time::timeout(selection, find_primary(&cs, route, tls.as_ref(), per_host))
            .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(MongoError::NoPrimary {
                    hosts: cs.hosts_text(),
                    tried: vec![format!(
                        "none found within {}",
                        humantime::format_duration(selection)
                    )],
                })
            }
        };
    if let Some(user) = &cs.username {
        let mechanism = conn.mechanism(cs.mechanism);
        let pw = cs.password.as_ref().map(Secret::expose).unwrap_or_default();
        wire::within(
            timeout,
            conn.authenticate(&cs.auth_source, user, pw, mechanism),
        )
        .await
        .map_err(|e| MongoError::Auth {
            user: user.clone(),
            hosts: host.clone(),
            mechanism: mechanism.name(),
            source: e,
        })?;
    }
    Ok(Session { conn, host })
}

fn command_error(what: &str, hosts: &str, e: WireError) -> MongoError {
    let code = match &e {
        WireError::Command { code, .. } => *code,
        _ => None,
    };
    MongoError::Command {
        what: what.to_string(),
        hosts: hosts.to_string(),
        code,
        source: e,
    }
}

/// The admin connection: opened on first use, kept, and opened again after a
/// connection-level failure.
pub struct MongoAdmin {
    uri: Secret,
    ca: Option<PathBuf>,
    timeout: Duration,
    route: Route,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for MongoAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoAdmin")
            .field("hosts", &self.hosts())
            .field("ca", &self.ca)
            .field("route", &self.route)
            .finish()
    }
}

fn roles_doc(roles: &[Role]) -> Vec<Document> {
    roles
        .iter()
        .map(|(r, d)| doc! {"role": r, "db": d})
        .collect()
}

fn roles_of(user: &Document) -> Vec<Role> {
    user.get_array("roles")
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r.as_document())
                .filter_map(|r| {
                    Some((
                        r.get_str("role").ok()?.to_string(),
                        r.get_str("db").ok()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl MongoAdmin {
    /// An admin client for the deployment in `uri` (a connection string holding the admin's
    /// credentials), trusting `ca` for TLS, giving up on each step after `timeout`.
    pub fn new(uri: Secret, ca: Option<PathBuf>, timeout: Duration) -> Self {
        MongoAdmin {
            uri,
            ca,
            timeout,
            route: Route::Direct,
            session: Mutex::new(None),
        }
    }

    /// The same, reaching the servers by `route`.
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// How the servers are reached.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The CA certificate file TLS trusts, when one is set.
    pub fn ca(&self) -> Option<&PathBuf> {
        self.ca.as_ref()
    }

    /// The connection string's hosts, for messages (never its credentials).
    pub fn hosts(&self) -> String {
        hosts_of(self.uri.expose())
    }

    /// Whether the admin connection uses TLS (a connection string that does not parse
    /// counts as TLS here: connecting reports it).
    pub fn uses_tls(&self) -> bool {
        self.ca.is_some()
            || uri::parse(self.uri.expose())
                .map(|c| c.tls || c.tls_ca_file.is_some())
                .unwrap_or(true)
    }

    /// Runs a command on the primary, as the admin.
    async fn run(&self, db: &str, cmd: Document, what: &str) -> Result<Document, MongoError> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            *guard = Some(
                connect(
                    self.uri.expose(),
                    Trust::Ca(self.ca.as_ref()),
                    self.timeout,
                    &self.route,
                )
                .await?,
            );
        }
        let Some(s) = guard.as_mut() else {
            return Err(command_error(what, &self.hosts(), WireError::Closed));
        };
        let host = s.host.clone();
        match wire::within(self.timeout, s.conn.command(db, cmd)).await {
            Ok(d) => Ok(d),
            Err(e) => {
                if !matches!(e, WireError::Command { .. }) {
                    // The connection is in an unknown state: a new one next time.
                    *guard = None;
                }
                Err(command_error(what, &host, e))
            }
        }
    }

    /// The primary's highest wire version: 6 is MongoDB 3.6, 7 is 4.0, 8 is 4.2, 9 is
    /// 4.4, 13 is 5.0, 17 is 6.0, 21 is 7.0.
    pub async fn wire_version(&self) -> Result<i32, MongoError> {
        self.run("admin", doc! {"ping": 1}, "pinging the server")
            .await?;
        let guard = self.session.lock().await;
        Ok(guard.as_ref().map_or(0, |s| s.conn.max_wire_version()))
    }

    /// The user's roles, or None when there is no such user.
    pub async fn user(&self, db: &str, name: &str) -> Result<Option<Vec<Role>>, MongoError> {
        let r = self
            .run(
                db,
                doc! {"usersInfo": {"user": name, "db": db}},
                &format!("looking up user {name:?}"),
            )
            .await?;
        let Ok(users) = r.get_array("users") else {
            return Ok(None);
        };
        let Some(Bson::Document(u)) = users.first() else {
            return Ok(None);
        };
        Ok(Some(roles_of(u)))
    }

    /// Creates the user. No `mechanisms` field: 3.6 does not know it, and 4.0 and later
    /// then keep both SCRAM-SHA-1 and SCRAM-SHA-256 credentials, so CircleCI's own
    /// (older) drivers can log in too.
    pub async fn create_user(
        &self,
        db: &str,
        name: &str,
        pwd: &str,
        roles: &[Role],
    ) -> Result<(), MongoError> {
        self.run(
            db,
            doc! {"createUser": name, "pwd": pwd, "roles": roles_doc(roles)},
            &format!("creating user {name:?}"),
        )
        .await
        .map(|_| ())
    }

    /// Sets the password in place (updateUser), keeping the user and its roles.
    pub async fn set_password(&self, db: &str, name: &str, pwd: &str) -> Result<(), MongoError> {
        self.run(
            db,
            doc! {"updateUser": name, "pwd": pwd},
            &format!("setting the password of user {name:?}"),
        )
        .await
        .map(|_| ())
    }

    /// Grants `roles` to user `name` of database `db`.
    pub async fn grant(&self, db: &str, name: &str, roles: &[Role]) -> Result<(), MongoError> {
        if roles.is_empty() {
            return Ok(());
        }
        self.run(
            db,
            doc! {"grantRolesToUser": name, "roles": roles_doc(roles)},
            &format!("granting roles to {name:?}"),
        )
        .await
        .map(|_| ())
    }

    /// Revokes `roles` from user `name` of database `db`.
    pub async fn revoke(&self, db: &str, name: &str, roles: &[Role]) -> Result<(), MongoError> {
        if roles.is_empty() {
            return Ok(());
        }
        self.run(
            db,
            doc! {"revokeRolesFromUser": name, "roles": roles_doc(roles)},
            &format!("revoking roles from {name:?}"),
        )
        .await
        .map(|_| ())
    }

    /// The collections of `db` (without `system.*`), sorted: listCollections, with
    /// getMore for long lists.
    pub async fn collection_names(&self, db: &str) -> Result<Vec<String>, MongoError> {
        Ok(self
            .collection_infos(db, true)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// listCollections of `db` (without `system.*`), sorted by name: each name with
    /// what the server says of it (`type`, `options`), all of it unless `names_only`.
    async fn collection_infos(
        &self,
        db: &str,
        names_only: bool,
    ) -> Result<Vec<(String, Document)>, MongoError> {
        let what = format!("listing the collections of {db}");
        let mut reply = self
            .run(
                db,
                doc! {"listCollections": 1, "nameOnly": names_only},
                &what,
            )
            .await?;
        let mut infos = Vec::new();
        loop {
            let cursor = reply.get_document("cursor").cloned().unwrap_or_default();
            let batch = cursor
                .get_array("firstBatch")
                .or_else(|_| cursor.get_array("nextBatch"))
                .cloned()
                .unwrap_or_default();
            infos.extend(batch.into_iter().filter_map(|c| match c {
                Bson::Document(d) => d.get_str("name").ok().map(|n| (n.to_string(), d.clone())),
                _ => None,
            }));
            let id = cursor.get_i64("id").unwrap_or(0);
            if id == 0 {
                break;
            }
            reply = self
                .run(
                    db,
                    doc! {"getMore": id, "collection": "$cmd.listCollections"},
                    &what,
                )
                .await?;
        }
        infos.retain(|(n, _)| !n.starts_with("system."));
        infos.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(infos)
    }

    /// Drops collections `names` of `db` (those missing are no error): what undoes a
    /// restore that failed half-way into a database that was empty.
    pub async fn drop_collections(&self, db: &str, names: &[String]) -> Result<(), MongoError> {
        let present = self.collection_names(db).await?;
        for n in names.iter().filter(|n| present.contains(n)) {
            self.run(db, doc! {"drop": n}, &format!("dropping {db}.{n}"))
                .await?;
        }
        Ok(())
    }

    /// Every collection of `db` with its kind, document count and checksum, sorted by
    /// name, as `MONGO_STATS_SCRIPT` prints them for the embedded side: an ordinary
    /// collection's `dbHash` md5, nothing for a capped one, a view's `viewOn`.
    pub async fn collection_stats(&self, db: &str) -> Result<Vec<TableStat>, MongoError> {
        self.stats(db, true).await
    }

    /// As [`collection_stats`](Self::collection_stats) without the checksums: no
    /// dbHash, which reads every document and blocks writes to the database meanwhile.
    pub async fn collection_counts(&self, db: &str) -> Result<Vec<TableStat>, MongoError> {
        self.stats(db, false).await
    }

    async fn stats(&self, db: &str, hash: bool) -> Result<Vec<TableStat>, MongoError> {
        let infos = self.collection_infos(db, false).await?;
        let hashes = match hash {
            true => self
                .run(db, doc! {"dbHash": 1}, &format!("hashing {db}"))
                .await?
                .get_document("collections")
                .cloned()
                .unwrap_or_default(),
            false => Document::new(),
        };
        let mut out = Vec::new();
        for (n, info) in infos {
            let options = info.get_document("options").cloned().unwrap_or_default();
            let (kind, checksum) = if info.get_str("type") == Ok("view") {
                (Kind::View, options.get_str("viewOn").unwrap_or_default())
            } else if options.get_bool("capped") == Ok(true) {
                (Kind::Capped, "")
            } else {
                (Kind::Collection, hashes.get_str(&n).unwrap_or_default())
            };
            let checksum = checksum.to_string();
            let c = self
                .run(db, doc! {"count": &n}, &format!("counting {db}.{n}"))
                .await?;
            let rows = match c.get("n") {
                Some(Bson::Int32(v)) => i64::from(*v),
                Some(Bson::Int64(v)) => *v,
                Some(Bson::Double(v)) => crate::plugin::value::exact_int(*v).unwrap_or(-1),
                _ => -1,
            };
            out.push(TableStat {
                kind,
                checksum,
                table: n,
                rows,
            });
        }
        Ok(out)
    }

    /// Drops the user; Ok(false) when it did not exist (code 11, UserNotFound).
    pub async fn drop_user(&self, db: &str, name: &str) -> Result<bool, MongoError> {
        match self
            .run(
                db,
                doc! {"dropUser": name},
                &format!("dropping user {name:?}"),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(MongoError::Command { code: Some(11), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Logs in with `uri` (the file's own connection string) and checks the user holds
/// `roles`, the way CircleCI will connect.
pub(crate) async fn verify(
    uri: &str,
    (trust, route): (Trust<'_>, &Route),
    auth_db: &str,
    user: &str,
    roles: &[Role],
    timeout: Duration,
) -> Result<(), MongoError> {
    let mut s = connect(uri, trust, timeout, route).await?;
    let r = wire::within(
        timeout,
        s.conn
            .command(auth_db, doc! {"usersInfo": {"user": user, "db": auth_db}}),
    )
    .await
    .map_err(|e| command_error(&format!("reading the roles of {user:?}"), &s.host, e))?;
    let have: Vec<Role> = r
        .get_array("users")
        .ok()
        .and_then(|u| u.first())
        .and_then(|u| u.as_document())
        .map(roles_of)
        .unwrap_or_default();
    let missing: Vec<String> = roles
        .iter()
        .filter(|r| !have.contains(r))
        .map(|(r, d)| format!("{r}@{d}"))
        .collect();
    if !missing.is_empty() {
        return Err(MongoError::MissingRoles {
            user: user.to_string(),
            hosts: s.host,
            missing,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers the handshake as MongoDB 3.4 would (wire version 5).
    async fn old_server() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut sock, _) = l.accept().await.unwrap();
            let mut header = [0u8; 16];
            sock.read_exact(&mut header).await.unwrap();
            let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 16];
            sock.read_exact(&mut body).await.unwrap();
            let mut reply = Vec::new();
            reply.extend_from_slice(&[0u8; 20]);
            reply[16..20].copy_from_slice(&1i32.to_le_bytes());
            bson::doc! {"ok": 1.0, "ismaster": true, "maxWireVersion": 5}
                .to_writer(&mut reply)
                .unwrap();
            let mut msg = Vec::new();
            msg.extend_from_slice(&((16 + reply.len()) as i32).to_le_bytes());
            msg.extend_from_slice(&1i32.to_le_bytes());
            msg.extend_from_slice(&header[4..8]);
            msg.extend_from_slice(&1i32.to_le_bytes());
            msg.extend_from_slice(&reply);
            sock.write_all(&msg).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn servers_older_than_3_6_are_refused_by_name_and_version() {
        let port = old_server().await;
        let uri = format!("mongodb://admin:secret@127.0.0.1:{port}/?authSource=admin");
        let e = super::connect(
            &uri,
            super::Trust::Ca(None),
            std::time::Duration::from_secs(5),
            &super::Route::Direct,
        )
        .await
        .err()
        .unwrap();
        assert!(
            matches!(
                e,
                super::MongoError::Unsupported {
                    wire_version: 5,
                    ..
                }
            ),
            "{e:?}"
        );
        let m = e.to_string();
        assert!(
            m.contains(&format!("127.0.0.1:{port}")) && m.contains("3.6"),
            "{m}"
        );
        assert!(!m.contains("secret"), "{m}");
    }

    #[tokio::test]
    async fn nothing_listening_names_the_host() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let uri = format!("mongodb://u:secret@127.0.0.1:{port}/");
        let e = super::connect(
            &uri,
            super::Trust::Ca(None),
            std::time::Duration::from_secs(2),
            &super::Route::Direct,
        )
        .await
        .err()
        .unwrap();
        let m = crate::backends::chain(&e);
        assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
        assert!(!m.contains("secret"), "{m}");
    }

    #[test]
    fn hosts_never_show_part_of_a_password() {
        assert_eq!(
            super::hosts_of("mongodb://admin:se/cret@h:27017/db"),
            "h:27017"
        );
        assert_eq!(super::hosts_of("mongodb://admin:se?cret@h/db?x=@"), "");
        assert!(!super::hosts_of("mongodb://admin:se/cr@t@h/db").contains("se"));
    }

    #[test]
    fn hosts_without_credentials() {
        assert_eq!(
            super::hosts_of("mongodb://a:p%40w@m1:27017,m2:27017/db?x=1"),
            "m1:27017,m2:27017"
        );
        assert_eq!(super::hosts_of("mongodb://m1/?x"), "m1");
    }
}
