//! # A MongoDB STAND-IN — not MongoDB
//!
//! No MongoDB server can be installed from the package registries terraform-provider-
//! circleci's machines reach, so its tests talk to this: a small server written from
//! MongoDB's public wire-protocol and command documentation. It speaks just enough for
//! the official driver to connect, authenticate and manage users:
//!
//! - wire protocol: OP_MSG (with or without checksum), and OP_QUERY/OP_REPLY for the
//!   drivers' first handshake; TCP on 127.0.0.1 only, no compression; TLS from the first
//!   byte (as mongod's `net.tls.mode: requireTLS`) with `--tls-cert F --tls-key F`;
//! - `hello` / `isMaster` (standalone, or a replica-set member with `--replica-set`),
//!   `ping`, `buildInfo`, `endSessions`; `--advertise HOST:PORT` is the member's name in
//!   the answer (default 127.0.0.1:PORT), and `--primary HOST:PORT` makes it a secondary
//!   that names that primary: a secondary refuses every command past the login with code
//!   10107 (NotWritablePrimary / "not master"), as a driver asking it to write would see;
//! - SCRAM-SHA-1 (over MongoDB's password digest, hex MD5 of `user:mongo:password`) and
//!   SCRAM-SHA-256 (`saslStart` / `saslContinue`) with real verification of the proof
//!   and the server signature; before authentication every other command fails with
//!   code 13 (Unauthorized);
//! - `createUser`, `updateUser`, `grantRolesToUser`, `revokeRolesFromUser`, `dropUser`,
//!   `usersInfo`, `connectionStatus`, `listDatabases`, with MongoDB's error codes
//!   (51003 user exists, 11 UserNotFound, 13 Unauthorized, 18 AuthenticationFailed);
//! - every other command fails with code 59 (CommandNotFound): never a silent ok.
//!
//! Two modes (`--mode`), from MongoDB's documentation of each version:
//! - `current` (default): wire version 17 (6.0); `hello` and `isMaster`;
//!   `saslSupportedMechs`; users get SCRAM-SHA-1 and SCRAM-SHA-256 credentials unless
//!   `createUser` names `mechanisms`; `usersInfo` lists the mechanisms.
//! - `3.6`: wire version 6; `isMaster` only (`hello` is CommandNotFound, as before 4.4.2);
//!   no `saslSupportedMechs`; SCRAM-SHA-1 only, 10000 iterations; `mechanisms` in
//!   `createUser` / `updateUser` is refused with BadValue like any field 3.6 does not
//!   know; `usersInfo` has no `mechanisms`.
//!
//! Documents (src/store.rs), for the data migration: `insert`, `find` (an empty filter
//! or top-level equality; no sort or projection), `getMore`, `killCursors`, `count`,
//! `listCollections`, `listIndexes`, `createIndexes`, `create` (capped collections and
//! views: see src/store.rs), `drop`, `dropDatabase`, `dbHash`,
//! and the databases in `listDatabases`; with `--dbpath DIR` they persist there (each
//! collection's documents one after another, as mongodump writes them), else in memory.
//! Reading needs a role on the database (read, readWrite, dbOwner) or root /
//! readAnyDatabase / readWriteAnyDatabase; writing needs readWrite, dbOwner, root or
//! readWriteAnyDatabase. `--noauth` serves every command without a login, as the
//! embedded MongoDB of CircleCI's Services machine does inside its container.
//!
//! It keeps users in memory, supports no x.509, sessions, transactions, updates,
//! deletes, aggregation, client certificates or a mix of TLS and plain connections.
//!
//! Usage: `mongo-standin --port N (--admin-user U --admin-password P | --noauth)
//! [--mode current|3.6] [--replica-set NAME [--advertise H:P] [--primary H:P]] [--tls-cert F --tls-key F]
//! [--dbpath DIR] [--pidfile F]`. The admin
//! user lives in `admin` with the `root` role.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::{digest, hmac, pbkdf2, rand::SecureRandom};
use base64::Engine;
use bson::{doc, spec::BinarySubtype, Binary, Bson, Document};
use md5::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

mod store;

const OP_REPLY: i32 = 1;
const OP_QUERY: i32 = 2004;
const OP_MSG: i32 = 2013;
/// MongoDB's default scramIterationCount and scramSHA256IterationCount.
const SHA1_ITERATIONS: u32 = 10000;
const SHA256_ITERATIONS: u32 = 15000;
const MAX_MESSAGE: usize = 48_000_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Current,
    V36,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mech {
    Sha1,
    Sha256,
}

impl Mech {
    fn parse(s: &str) -> Option<Mech> {
        match s {
            "SCRAM-SHA-1" => Some(Mech::Sha1),
            "SCRAM-SHA-256" => Some(Mech::Sha256),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Mech::Sha1 => "SCRAM-SHA-1",
            Mech::Sha256 => "SCRAM-SHA-256",
        }
    }
}

/// One mechanism's stored credential, as mongod keeps it: never the password.
#[derive(Clone)]
struct Cred {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

#[derive(Clone)]
struct User {
    sha1: Option<Cred>,
    sha256: Option<Cred>,
    roles: Vec<(String, String)>,
}

impl User {
    fn cred(&self, m: Mech) -> Option<&Cred> {
        match m {
            Mech::Sha1 => self.sha1.as_ref(),
            Mech::Sha256 => self.sha256.as_ref(),
        }
    }
    fn mechanisms(&self) -> Vec<&'static str> {
        [Mech::Sha1, Mech::Sha256]
            .into_iter()
            .filter(|m| self.cred(*m).is_some())
            .map(Mech::name)
            .collect()
    }
}

struct Server {
    mode: Mode,
    users: Mutex<BTreeMap<(String, String), User>>,
    replica_set: Option<String>,
    me: String,
    /// The primary this member names, when it is a secondary.
    primary: Option<String>,
    connections: AtomicI32,
    store: store::Store,
    noauth: bool,
}

/// A command's failure, as mongod reports it.
struct CmdError {
    code: i32,
    name: &'static str,
    msg: String,
}

fn fail(code: i32, name: &'static str, msg: impl Into<String>) -> CmdError {
    CmdError {
        code,
        name,
        msg: msg.into(),
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn mac(m: Mech, key: &[u8], data: &[u8]) -> Vec<u8> {
    let alg = match m {
        Mech::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        Mech::Sha256 => hmac::HMAC_SHA256,
    };
    hmac::sign(&hmac::Key::new(alg, key), data)
        .as_ref()
        .to_vec()
}

fn hash(m: Mech, data: &[u8]) -> Vec<u8> {
    let alg = match m {
        Mech::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        Mech::Sha256 => &digest::SHA256,
    };
    digest::digest(alg, data).as_ref().to_vec()
}

/// The credential mongod derives: SCRAM-SHA-1 over hex MD5 of `user:mongo:password`
/// (16-byte salt), SCRAM-SHA-256 over the password itself (28-byte salt).
fn make_cred(m: Mech, user: &str, password: &str) -> Result<Cred, CmdError> {
    let (input, salt_len, iterations, alg, len) = match m {
        Mech::Sha1 => {
            let d = md5::Md5::digest(format!("{user}:mongo:{password}").as_bytes());
            let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
            (hex, 16, SHA1_ITERATIONS, pbkdf2::PBKDF2_HMAC_SHA1, 20)
        }
        Mech::Sha256 => (
            password.to_string(),
            28,
            SHA256_ITERATIONS,
            pbkdf2::PBKDF2_HMAC_SHA256,
            32,
        ),
    };
    let mut salt = vec![0u8; salt_len];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| no_random())?;
    let mut salted = vec![0u8; len];
    pbkdf2::derive(
        alg,
        std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN),
        &salt,
        input.as_bytes(),
        &mut salted,
    );
    let client_key = mac(m, &salted, b"Client Key");
    Ok(Cred {
        salt,
        iterations,
        stored_key: hash(m, &client_key),
        server_key: mac(m, &salted, b"Server Key"),
    })
}

fn no_random() -> CmdError {
    fail(1, "InternalError", "the system gave no random bytes")
}

/// A user's credentials for this mode: 3.6 knows SCRAM-SHA-1 only; later versions make
/// both unless `mechanisms` narrows them.
fn make_user(
    mode: Mode,
    user: &str,
    password: &str,
    mechanisms: Option<&[Mech]>,
    roles: Vec<(String, String)>,
) -> Result<User, CmdError> {
    let wanted: Vec<Mech> = match (mode, mechanisms) {
        (Mode::V36, _) => vec![Mech::Sha1],
        (Mode::Current, Some(m)) => m.to_vec(),
        (Mode::Current, None) => vec![Mech::Sha1, Mech::Sha256],
    };
    let cred = |m: Mech| {
        wanted
            .contains(&m)
            .then(|| make_cred(m, user, password))
            .transpose()
    };
    Ok(User {
        sha1: cred(Mech::Sha1)?,
        sha256: cred(Mech::Sha256)?,
        roles,
    })
}

/// `mechanisms` of createUser/updateUser: refused by 3.6 (an unknown field), checked
/// by later versions.
fn mechanisms_arg(mode: Mode, body: &Document, cmd: &str) -> Result<Option<Vec<Mech>>, CmdError> {
    let Some(v) = body.get("mechanisms") else {
        return Ok(None);
    };
    if mode == Mode::V36 {
        return Err(fail(
            2,
            "BadValue",
            format!("\"mechanisms\" is not a valid argument to {cmd}"),
        ));
    }
    let Bson::Array(items) = v else {
        return Err(fail(2, "BadValue", "mechanisms field must be an array"));
    };
    let mut out = Vec::new();
    for i in items {
        match i.as_str().and_then(Mech::parse) {
            Some(m) => out.push(m),
            None => return Err(fail(2, "BadValue", format!("Unknown auth mechanism '{i}'"))),
        }
    }
    if out.is_empty() {
        return Err(fail(2, "BadValue", "mechanisms field must not be empty"));
    }
    Ok(Some(out))
}

/// The fields 3.6's user management commands accept; any other is BadValue there.
fn check_fields_36(mode: Mode, body: &Document, cmd: &str) -> Result<(), CmdError> {
    if mode != Mode::V36 {
        return Ok(());
    }
    const KNOWN: [&str; 6] = [
        "pwd",
        "customData",
        "roles",
        "digestPassword",
        "writeConcern",
        "authenticationRestrictions",
    ];
    for k in body.keys() {
        if k == cmd || k.starts_with('$') || k == "lsid" || KNOWN.contains(&k.as_str()) {
            continue;
        }
        return Err(fail(
            2,
            "BadValue",
            format!("\"{k}\" is not a valid argument to {cmd}"),
        ));
    }
    Ok(())
}

/// Roles as `[{role, db}]` or `["role"]` (meaning the command's database).
fn parse_roles(v: Option<&Bson>, db: &str) -> Result<Vec<(String, String)>, CmdError> {
    let Some(Bson::Array(items)) = v else {
        return Err(fail(2, "BadValue", "roles must be an array"));
    };
    let mut out = Vec::new();
    for r in items {
        match r {
            Bson::String(s) => out.push((s.clone(), db.to_string())),
            Bson::Document(d) => {
                let role = d
                    .get_str("role")
                    .map_err(|_| fail(2, "BadValue", "role must be a string"))?;
                let rdb = d
                    .get_str("db")
                    .map_err(|_| fail(2, "BadValue", "role db must be a string"))?;
                out.push((role.to_string(), rdb.to_string()));
            }
            _ => {
                return Err(fail(
                    2,
                    "BadValue",
                    "each role must be a string or {role, db}",
                ))
            }
        }
    }
    Ok(out)
}

fn roles_bson(roles: &[(String, String)]) -> Bson {
    Bson::Array(
        roles
            .iter()
            .map(|(r, d)| Bson::Document(doc! {"role": r, "db": d}))
            .collect(),
    )
}

/// SCRAM attribute parsing: `n=user,r=nonce` style.
fn attrs(s: &str) -> HashMap<char, String> {
    s.split(',')
        .filter_map(|kv| {
            let mut c = kv.chars();
            let k = c.next()?;
            (c.next() == Some('=')).then(|| (k, kv[2..].to_string()))
        })
        .collect()
}

struct Scram {
    mech: Mech,
    db: String,
    user: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    record: Option<Cred>,
    done: bool,
    /// saslStart's `options.skipEmptyExchange`: finish on the second round.
    skip_empty: bool,
}

#[derive(Default)]
struct Conn {
    auth: Option<(String, String)>,
    scram: Option<Scram>,
}

impl Server {
    fn can_admin_users(&self, who: &Option<(String, String)>, db: &str) -> bool {
        let Some(key) = who else { return false };
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(u) = users.get(key) else {
            return false;
        };
        u.roles.iter().any(|(r, d)| {
            (d == "admin" && (r == "root" || r == "userAdminAnyDatabase"))
                || (d == db && (r == "userAdmin" || r == "dbOwner"))
        })
    }

    /// May `who` read (or, with `write`, change) documents in `db`?
    fn can_use(&self, who: &Option<(String, String)>, db: &str, write: bool) -> bool {
        if self.noauth {
            return true;
        }
        let Some(key) = who else { return false };
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(u) = users.get(key) else {
            return false;
        };
        u.roles.iter().any(|(r, d)| {
            let any = d == "admin"
                && (r == "root"
                    || r == "readWriteAnyDatabase"
                    || (!write && r == "readAnyDatabase"));
            any || (d == db && (r == "readWrite" || r == "dbOwner" || (!write && r == "read")))
        })
    }

    fn hello(&self, body: &Document, conn_id: i32) -> Document {
        let mut d = doc! {
            "helloOk": true,
            "isWritablePrimary": true,
            "ismaster": true,
            "maxBsonObjectSize": 16_777_216,
            "maxMessageSizeBytes": i32::try_from(MAX_MESSAGE).unwrap_or(i32::MAX),
            "maxWriteBatchSize": 100_000,
            "localTime": bson::DateTime::now(),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": conn_id,
            "minWireVersion": 0,
            "maxWireVersion": if self.mode == Mode::V36 { 6 } else { 17 },
            "readOnly": false,
        };
        if self.mode == Mode::V36 {
            // isWritablePrimary and helloOk came with 4.4.2 / 5.0.
            d.remove("helloOk");
            d.remove("isWritablePrimary");
        }
        if let Some(rs) = &self.replica_set {
            let primary = self.primary.clone().unwrap_or_else(|| self.me.clone());
            let mut hosts = vec![primary.clone()];
            if self.primary.is_some() {
                hosts.push(self.me.clone());
                d.insert("ismaster", false);
                if d.contains_key("isWritablePrimary") {
                    d.insert("isWritablePrimary", false);
                }
            }
            d.insert("setName", rs.clone());
            d.insert("setVersion", 1);
            d.insert("hosts", hosts);
            d.insert("primary", primary);
            d.insert("me", self.me.clone());
            d.insert("secondary", self.primary.is_some());
        }
        // saslSupportedMechs came with 4.0; 3.6 ignores the field.
        if let (Mode::Current, Ok(who)) = (self.mode, body.get_str("saslSupportedMechs")) {
            if let Some((db, user)) = who.split_once('.') {
                if let Some(u) = self
                    .users
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&(db.to_string(), user.to_string()))
                {
                    d.insert("saslSupportedMechs", u.mechanisms());
                }
            }
        }
        d
    }

    fn command(
        &self,
        conn: &mut Conn,
        body: &Document,
        conn_id: i32,
    ) -> Result<Document, CmdError> {
        let name = body.keys().next().cloned().unwrap_or_default();
        let db = body.get_str("$db").unwrap_or("admin").to_string();
        match name.as_str() {
            "hello" if self.mode == Mode::V36 => {
                return Err(fail(59, "CommandNotFound", "no such command: 'hello'"))
            }
            "hello" | "isMaster" | "ismaster" => return Ok(self.hello(body, conn_id)),
            "ping" => return Ok(doc! {}),
            "buildInfo" | "buildinfo" => {
                return Ok(match self.mode {
                    Mode::V36 => {
                        doc! {"version": "3.6.12-standin", "versionArray": [3, 6, 12, 0], "maxBsonObjectSize": 16_777_216}
                    }
                    Mode::Current => {
                        doc! {"version": "6.0.0-standin", "versionArray": [6, 0, 0, 0], "maxBsonObjectSize": 16_777_216}
                    }
                })
            }
            "endSessions" => return Ok(doc! {}),
            "saslStart" => return self.sasl_start(conn, body, &db),
            "saslContinue" => return self.sasl_continue(conn, body),
            _ => {}
        }
        if self.primary.is_some() {
            let (what, msg) = match self.mode {
                Mode::V36 => ("NotMaster", "not master"),
                Mode::Current => ("NotWritablePrimary", "not primary"),
            };
            return Err(fail(10107, what, msg));
        }
        if conn.auth.is_none() && !self.noauth {
            return Err(fail(
                13,
                "Unauthorized",
                format!("command {name} requires authentication"),
            ));
        }
        let write = matches!(
            name.as_str(),
            "insert" | "createIndexes" | "create" | "drop" | "dropDatabase"
        );
        if let Some(r) = {
            let allowed = self.can_use(&conn.auth, &db, write);
            self.store.command(&name, body, &db).map(|r| {
                if allowed {
                    r
                } else {
                    Err(fail(
                        13,
                        "Unauthorized",
                        format!("not authorized on {db} to execute command {{ {name}: ... }}"),
                    ))
                }
            })
        } {
            return r;
        }
        if conn.auth.is_none() && !self.noauth {
            return Err(fail(
                13,
                "Unauthorized",
                format!("command {name} requires authentication"),
            ));
        }
        let target = |field: &str| -> Result<String, CmdError> {
            body.get_str(field)
                .map(str::to_string)
                .map_err(|_| fail(2, "BadValue", format!("{field} must be a user name")))
        };
        let admin = |s: &Self| -> Result<(), CmdError> {
            if s.can_admin_users(&conn.auth, &db) {
                Ok(())
            } else {
                Err(fail(
                    13,
                    "Unauthorized",
                    format!("not authorized on {db} to execute command {{ {name}: ... }}"),
                ))
            }
        };
        match name.as_str() {
            "connectionStatus" => {
                let Some((adb, au)) = conn.auth.clone() else {
                    return Ok(
                        doc! {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}},
                    );
                };
                let roles = self
                    .users
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&(adb.clone(), au.clone()))
                    .map(|u| u.roles.clone())
                    .unwrap_or_default();
                Ok(
                    doc! {"authInfo": {"authenticatedUsers": [{"user": au, "db": adb}], "authenticatedUserRoles": roles_bson(&roles)}},
                )
            }
            "listDatabases" => {
                admin(self).or_else(|_| {
                    if db == "admin" {
                        Ok(())
                    } else {
                        Err(fail(13, "Unauthorized", "listDatabases runs on admin"))
                    }
                })?;
                let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
                let mut names: Vec<String> = users.keys().map(|(d, _)| d.clone()).collect();
                names.extend(
                    users
                        .values()
                        .flat_map(|u| u.roles.iter().map(|(_, d)| d.clone())),
                );
                let stored = self.store.databases();
                names.extend(stored.iter().map(|(n, _)| n.clone()));
                names.sort();
                names.dedup();
                let mut total = 0_i64;
                let dbs: Vec<Bson> = names
                    .into_iter()
                    .map(|n| {
                        let size = stored.iter().find(|(d, _)| *d == n).map_or(0, |(_, s)| *s);
                        total += size;
                        Bson::Document(doc! {"name": n, "sizeOnDisk": size, "empty": size == 0})
                    })
                    .collect();
                Ok(doc! {"databases": dbs, "totalSize": total})
            }
            "createUser" => {
                admin(self)?;
                check_fields_36(self.mode, body, "createUser")?;
                let mechanisms = mechanisms_arg(self.mode, body, "createUser")?;
                let user = target("createUser")?;
                let pwd = body.get_str("pwd").map_err(|_| {
                    fail(
                        2,
                        "BadValue",
                        "pwd is required (only SCRAM users exist here)",
                    )
                })?;
                let roles = parse_roles(body.get("roles"), &db)?;
                let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
                let key = (db.clone(), user.clone());
                if users.contains_key(&key) {
                    return Err(fail(
                        51003,
                        "Location51003",
                        format!("User \"{user}@{db}\" already exists"),
                    ));
                }
                users.insert(
                    key,
                    make_user(self.mode, &user, pwd, mechanisms.as_deref(), roles)?,
                );
                Ok(doc! {})
            }
            "updateUser" | "grantRolesToUser" | "revokeRolesFromUser" => {
                admin(self)?;
                let mechanisms = if name == "updateUser" {
                    check_fields_36(self.mode, body, "updateUser")?;
                    mechanisms_arg(self.mode, body, "updateUser")?
                } else {
                    None
                };
                let user = target(&name)?;
                let key = (db.clone(), user.clone());
                let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(u) = users.get_mut(&key) else {
                    return Err(fail(
                        11,
                        "UserNotFound",
                        format!("Could not find user \"{user}\" for db \"{db}\""),
                    ));
                };
                match name.as_str() {
                    "updateUser" => {
                        if let Ok(pwd) = body.get_str("pwd") {
                            let roles = u.roles.clone();
                            *u = make_user(self.mode, &user, pwd, mechanisms.as_deref(), roles)?;
                        }
                        if body.contains_key("roles") {
                            u.roles = parse_roles(body.get("roles"), &db)?;
                        }
                    }
                    "grantRolesToUser" => {
                        for r in parse_roles(body.get("roles"), &db)? {
                            if !u.roles.contains(&r) {
                                u.roles.push(r);
                            }
                        }
                    }
                    _ => {
                        let revoke = parse_roles(body.get("roles"), &db)?;
                        u.roles.retain(|r| !revoke.contains(r));
                    }
                }
                Ok(doc! {})
            }
            "dropUser" => {
                admin(self)?;
                let user = target("dropUser")?;
                if self
                    .users
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&(db.clone(), user.clone()))
                    .is_none()
                {
                    return Err(fail(
                        11,
                        "UserNotFound",
                        format!("User \"{user}@{db}\" not found"),
                    ));
                }
                Ok(doc! {})
            }
            "usersInfo" => {
                let wanted: Vec<(String, String)> = match body.get("usersInfo") {
                    Some(Bson::String(u)) => vec![(db.clone(), u.clone())],
                    Some(Bson::Document(d)) => vec![(
                        d.get_str("db").unwrap_or(&db).to_string(),
                        d.get_str("user").unwrap_or_default().to_string(),
                    )],
                    _ => {
                        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
                        users.keys().filter(|(d, _)| *d == db).cloned().collect()
                    }
                };
                let is_self = wanted.len() == 1 && conn.auth.as_ref() == Some(&wanted[0]);
                if !is_self {
                    admin(self)?;
                }
                let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
                let found: Vec<Bson> = wanted
                    .iter()
                    .filter_map(|k| {
                        users.get(k).map(|u| {
                            let mut d = doc! {
                                "_id": format!("{}.{}", k.0, k.1), "user": &k.1, "db": &k.0,
                                "roles": roles_bson(&u.roles),
                            };
                            if self.mode == Mode::Current {
                                d.insert("mechanisms", u.mechanisms());
                            }
                            Bson::Document(d)
                        })
                    })
                    .collect();
                Ok(doc! {"users": found})
            }
            other => Err(fail(
                59,
                "CommandNotFound",
                format!("no such command: '{other}' (this is a MongoDB stand-in)"),
            )),
        }
    }

    fn sasl_start(&self, conn: &mut Conn, body: &Document, db: &str) -> Result<Document, CmdError> {
        let name = body.get_str("mechanism").unwrap_or_default();
        let mech = match (self.mode, Mech::parse(name)) {
            (Mode::V36, Some(m @ Mech::Sha1)) | (Mode::Current, Some(m)) => m,
            _ => {
                return Err(fail(
                    2,
                    "BadValue",
                    format!(
                    "Received authentication for mechanism {name} which is unknown or not enabled"
                ),
                ))
            }
        };
        let payload = match body.get("payload") {
            Some(Bson::Binary(b)) => String::from_utf8_lossy(&b.bytes).into_owned(),
            Some(Bson::String(s)) => s.clone(),
            _ => return Err(fail(2, "BadValue", "payload missing")),
        };
        let bare = payload
            .strip_prefix("n,,")
            .ok_or_else(|| fail(18, "AuthenticationFailed", "channel binding not supported"))?;
        let a = attrs(bare);
        let user = a
            .get(&'n')
            .cloned()
            .unwrap_or_default()
            .replace("=2C", ",")
            .replace("=3D", "=");
        let client_nonce = a
            .get(&'r')
            .cloned()
            .ok_or_else(|| fail(18, "AuthenticationFailed", "Authentication failed."))?;
        let record = self
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(db.to_string(), user.clone()))
            .and_then(|u| u.cred(mech).cloned());
        let mut rnd = [0u8; 24];
        aws_lc_rs::rand::SystemRandom::new()
            .fill(&mut rnd)
            .map_err(|_| no_random())?;
        let nonce = format!("{client_nonce}{}", b64().encode(rnd));
        // Unknown users get a fake salt so the answer does not reveal who exists.
        let (salt, iters) = match &record {
            Some(u) => (u.salt.clone(), u.iterations),
            None => match mech {
                Mech::Sha1 => (hash(mech, user.as_bytes())[..16].to_vec(), SHA1_ITERATIONS),
                Mech::Sha256 => (
                    hash(mech, user.as_bytes())[..28].to_vec(),
                    SHA256_ITERATIONS,
                ),
            },
        };
        let server_first = format!("r={nonce},s={},i={iters}", b64().encode(salt));
        conn.scram = Some(Scram {
            mech,
            db: db.to_string(),
            user,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
            record,
            done: false,
            skip_empty: body
                .get_document("options")
                .ok()
                .and_then(|o| o.get_bool("skipEmptyExchange").ok())
                .unwrap_or(false),
        });
        Ok(doc! {
            "conversationId": 1,
            "done": false,
            "payload": Binary { subtype: BinarySubtype::Generic, bytes: server_first.into_bytes() },
        })
    }

    fn sasl_continue(&self, conn: &mut Conn, body: &Document) -> Result<Document, CmdError> {
        let denied = || fail(18, "AuthenticationFailed", "Authentication failed.");
        let Some(st) = conn.scram.as_mut() else {
            return Err(denied());
        };
        let payload = match body.get("payload") {
            Some(Bson::Binary(b)) => String::from_utf8_lossy(&b.bytes).into_owned(),
            _ => String::new(),
        };
        if st.done {
            // The optional empty last round.
            conn.auth = Some((st.db.clone(), st.user.clone()));
            conn.scram = None;
            return Ok(
                doc! {"conversationId": 1, "done": true, "payload": Binary { subtype: BinarySubtype::Generic, bytes: vec![] }},
            );
        }
        let a = attrs(&payload);
        let proof = a
            .get(&'p')
            .and_then(|p| b64().decode(p).ok())
            .ok_or_else(denied)?;
        if a.get(&'r') != Some(&st.nonce) {
            return Err(denied());
        }
        let without_proof = payload
            .rsplit_once(",p=")
            .map(|(w, _)| w.to_string())
            .ok_or_else(denied)?;
        let auth_message = format!(
            "{},{},{}",
            st.client_first_bare, st.server_first, without_proof
        );
        let Some(user) = st.record.clone() else {
            return Err(denied());
        };
        let m = st.mech;
        let signature = mac(m, &user.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(denied());
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if hash(m, &client_key) != user.stored_key {
            conn.scram = None;
            return Err(denied());
        }
        let server_sig = mac(m, &user.server_key, auth_message.as_bytes());
        let final_msg = format!("v={}", b64().encode(server_sig));
        let skip_empty = st.skip_empty;
        if skip_empty {
            conn.auth = Some((st.db.clone(), st.user.clone()));
            conn.scram = None;
        } else {
            st.done = true;
        }
        Ok(doc! {
            "conversationId": 1,
            "done": skip_empty,
            "payload": Binary { subtype: BinarySubtype::Generic, bytes: final_msg.into_bytes() },
        })
    }
}

fn reply_doc(result: Result<Document, CmdError>) -> Document {
    match result {
        Ok(mut d) => {
            d.insert("ok", 1.0);
            d
        }
        Err(e) => doc! {"ok": 0.0, "errmsg": e.msg, "code": e.code, "codeName": e.name},
    }
}

/// The four little-endian bytes at the start of `b` (callers pass four).
fn le_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    a.iter_mut().zip(b).for_each(|(d, s)| *d = *s);
    i32::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(le_i32(b).to_le_bytes())
}

/// A length field: a negative one reads as 0, which every caller refuses.
fn le_len(b: &[u8]) -> usize {
    usize::try_from(le_i32(b)).unwrap_or(0)
}

fn cstring(buf: &[u8], at: &mut usize) -> Option<String> {
    let end = buf[*at..].iter().position(|b| *b == 0)? + *at;
    let s = String::from_utf8_lossy(&buf[*at..end]).into_owned();
    *at = end + 1;
    Some(s)
}

fn read_doc(buf: &[u8], at: &mut usize) -> Option<Document> {
    let len = le_len(buf.get(*at..*at + 4)?);
    let d = Document::from_reader(buf.get(*at..*at + len)?).ok()?;
    *at += len;
    Some(d)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    server: Arc<Server>,
    mut sock: S,
) -> std::io::Result<()> {
    let conn_id = server.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let mut conn = Conn::default();
    loop {
        let mut header = [0u8; 16];
        if sock.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        let len = le_len(&header[0..4]);
        let request_id = le_i32(&header[4..8]);
        let op = le_i32(&header[12..16]);
        if !(16..=MAX_MESSAGE).contains(&len) {
            return Ok(());
        }
        let mut body = vec![0u8; len - 16];
        sock.read_exact(&mut body).await?;
        let (reply_op, payload) = match op {
            OP_MSG => {
                let Some(flags) = body.get(0..4).map(le_u32) else {
                    return Ok(());
                };
                let end = if flags & 1 == 1 {
                    body.len() - 4
                } else {
                    body.len()
                };
                let mut at = 4;
                let mut cmd = None;
                let mut sequences: Vec<(String, Vec<Document>)> = Vec::new();
                while at < end {
                    let kind = body[at];
                    at += 1;
                    if kind == 0 {
                        cmd = read_doc(&body, &mut at);
                    } else {
                        let Some(size) = body.get(at..at + 4).map(le_len) else {
                            return Ok(());
                        };
                        let stop = at + size;
                        at += 4;
                        let id = cstring(&body, &mut at).unwrap_or_default();
                        let mut docs = Vec::new();
                        while at < stop {
                            match read_doc(&body, &mut at) {
                                Some(d) => docs.push(d),
                                None => break,
                            }
                        }
                        at = stop;
                        sequences.push((id, docs));
                    }
                }
                let mut cmd = cmd.unwrap_or_default();
                for (id, docs) in sequences {
                    cmd.insert(id, docs);
                }
                let reply = reply_doc(server.command(&mut conn, &cmd, conn_id));
                let mut out = Vec::new();
                out.extend_from_slice(&0u32.to_le_bytes());
                out.push(0);
                reply.to_writer(&mut out).map_err(std::io::Error::other)?;
                (OP_MSG, out)
            }
            OP_QUERY => {
                let mut at = 4;
                let collection = cstring(&body, &mut at).unwrap_or_default();
                at += 8;
                let mut query = read_doc(&body, &mut at).unwrap_or_default();
                if let Ok(inner) = query.get_document("$query") {
                    query = inner.clone();
                }
                let db = collection.split('.').next().unwrap_or("admin").to_string();
                query.insert("$db", db);
                let name = query.keys().next().cloned().unwrap_or_default();
                let reply = if matches!(name.as_str(), "isMaster" | "ismaster" | "hello") {
                    reply_doc(server.command(&mut conn, &query, conn_id))
                } else {
                    reply_doc(Err(fail(
                        352,
                        "UnsupportedOpQueryCommand",
                        "OP_QUERY is only for the handshake",
                    )))
                };
                let mut out = Vec::new();
                out.extend_from_slice(&0i32.to_le_bytes());
                out.extend_from_slice(&0i64.to_le_bytes());
                out.extend_from_slice(&0i32.to_le_bytes());
                out.extend_from_slice(&1i32.to_le_bytes());
                reply.to_writer(&mut out).map_err(std::io::Error::other)?;
                (OP_REPLY, out)
            }
            _ => return Ok(()), // OP_COMPRESSED and legacy opcodes: not spoken here.
        };
        let mut msg = Vec::with_capacity(16 + payload.len());
        let total = i32::try_from(16 + payload.len()).map_err(std::io::Error::other)?;
        msg.extend_from_slice(&total.to_le_bytes());
        msg.extend_from_slice(
            &conn_id
                .wrapping_mul(1_000_000)
                .wrapping_add(request_id)
                .to_le_bytes(),
        );
        msg.extend_from_slice(&request_id.to_le_bytes());
        msg.extend_from_slice(&reply_op.to_le_bytes());
        msg.extend_from_slice(&payload);
        sock.write_all(&msg).await?;
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// TLS for every connection, with this certificate chain and key (PEM files).
fn tls_acceptor(cert: &str, key: &str) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("--tls-cert {cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {key}: {e}"))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| format!("--tls-cert / --tls-key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// A startup error: said on stderr, exit status 2.
fn die(message: &str) -> ! {
    eprintln!("mongo-standin: {message}");
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: mongo-standin --port N (--admin-user U --admin-password P | --noauth) [--mode current|3.6] [--replica-set NAME [--advertise H:P] [--primary H:P]] [--tls-cert F --tls-key F] [--dbpath DIR] [--pidfile F]";
    let noauth = args.iter().any(|a| a == "--noauth");
    let admin = arg(&args, "--admin-user").zip(arg(&args, "--admin-password"));
    let Some(port) = arg(&args, "--port").filter(|_| noauth || admin.is_some()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let mode = match arg(&args, "--mode").as_deref() {
        None | Some("current") => Mode::Current,
        Some("3.6") => Mode::V36,
        Some(other) => {
            eprintln!("--mode {other}: expected current or 3.6\n{usage}");
            std::process::exit(2);
        }
    };
    let store = match store::Store::open(arg(&args, "--dbpath").map(std::path::PathBuf::from)) {
        Ok(mut s) => {
            s.capped_in_storage_order = mode == Mode::Current;
            s
        }
        Err(e) => {
            eprintln!("--dbpath: {e}");
            std::process::exit(2);
        }
    };
    let port: u16 = port
        .parse()
        .unwrap_or_else(|_| die(&format!("--port {port}: not a port number")));
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| die(&format!("binding 127.0.0.1:{port}: {e}")));
    let bound = listener
        .local_addr()
        .unwrap_or_else(|e| die(&format!("the bound address: {e}")));
    let me = arg(&args, "--advertise").unwrap_or_else(|| format!("127.0.0.1:{}", bound.port()));
    let primary = arg(&args, "--primary");
    if (primary.is_some() || arg(&args, "--advertise").is_some())
        && arg(&args, "--replica-set").is_none()
    {
        eprintln!("--advertise and --primary need --replica-set\n{usage}");
        std::process::exit(2);
    }
    let mut users = BTreeMap::new();
    if let Some((user, pw)) = admin {
        let admin = make_user(
            mode,
            &user,
            &pw,
            None,
            vec![("root".into(), "admin".into())],
        )
        .unwrap_or_else(|e| die(&format!("the admin user: {}", e.msg)));
        users.insert(("admin".to_string(), user), admin);
    }
    let server = Arc::new(Server {
        mode,
        users: Mutex::new(users),
        replica_set: arg(&args, "--replica-set"),
        me: me.clone(),
        primary,
        connections: AtomicI32::new(0),
        store,
        noauth,
    });
    let tls = match (arg(&args, "--tls-cert"), arg(&args, "--tls-key")) {
        (Some(c), Some(k)) => Some(tls_acceptor(&c, &k).unwrap_or_else(|e| die(&e))),
        (None, None) => None,
        _ => {
            eprintln!("--tls-cert and --tls-key go together\n{usage}");
            std::process::exit(2);
        }
    };
    if let Some(p) = arg(&args, "--pidfile") {
        std::fs::write(&p, std::process::id().to_string())
            .unwrap_or_else(|e| die(&format!("--pidfile {p}: {e}")));
    }
    eprintln!(
        "mongo-standin (a MongoDB STAND-IN, not MongoDB) in {} mode listening on {me}",
        if mode == Mode::V36 { "3.6" } else { "current" }
    );
    loop {
        tokio::select! {
            r = listener.accept() => {
                if let Ok((sock, _)) = r {
                    let s = server.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        let _ = match tls {
                            Some(acceptor) => match acceptor.accept(sock).await {
                                Ok(t) => serve(s, t).await,
                                Err(e) => {
                                    eprintln!("TLS handshake: {e}");
                                    Ok(())
                                }
                            },
                            None => serve(s, sock).await,
                        };
                    });
                }
            }
            _ = tokio::signal::ctrl_c() => return,
        }
    }
}
