//! MongoDB: the CircleCI user and its roles, through the official driver. The admin
//! connection string is a secret (it carries the admin password): it is never logged
//! or put in an error; messages name the hosts only.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, Tls, TlsOptions};
use mongodb::Client;
use tokio::sync::OnceCell;

use crate::secret::Secret;

/// What failed, on which hosts (never the connection string: it carries a password).
/// `code` is MongoDB's error code when the server answered a command with one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MongoError {
    #[error("the MongoDB connection string for {hosts} is not valid: {detail}")]
    BadUri { hosts: String, detail: String },
    #[error("{what} on MongoDB at {hosts}: {detail}")]
    Command {
        what: String,
        hosts: String,
        code: Option<i32>,
        detail: String,
    },
    #[error("{user:?} logged in to {hosts} but lacks {}", .missing.join(", "))]
    MissingRoles {
        user: String,
        hosts: String,
        missing: Vec<String>,
    },
}

impl MongoError {
    fn command(
        what: impl Into<String>,
        hosts: impl Into<String>,
        e: &mongodb::error::Error,
    ) -> Self {
        MongoError::Command {
            what: what.into(),
            hosts: hosts.into(),
            code: code(e),
            detail: describe(e),
        }
    }
}

/// A role: (role, database).
pub type Role = (String, String);

/// The hosts of a connection string, without credentials, for messages.
pub fn hosts_of(uri: &str) -> String {
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority)
        .to_string()
}

fn code(e: &mongodb::error::Error) -> Option<i32> {
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) => Some(c.code),
        _ => None,
    }
}

fn describe(e: &mongodb::error::Error) -> String {
    match *e.kind {
        mongodb::error::ErrorKind::Command(ref c) => {
            format!("{} (code {}, {})", c.message, c.code, c.code_name)
        }
        mongodb::error::ErrorKind::Authentication { ref message, .. } => {
            format!("authentication failed: {message}")
        }
        mongodb::error::ErrorKind::ServerSelection { ref message, .. } => {
            format!("no server answered: {message}")
        }
        _ => e.to_string(),
    }
}

/// Opens a client for `uri` (lazily connecting), with an optional CA file.
pub async fn client_for(
    uri: &str,
    ca: Option<&PathBuf>,
    timeout: Duration,
) -> Result<Client, MongoError> {
    let hosts = hosts_of(uri);
    let mut o = ClientOptions::parse(uri)
        .await
        .map_err(|e| MongoError::BadUri {
            hosts: hosts.clone(),
            detail: describe(&e),
        })?;
    // Settings in the connection string win; otherwise the provider's timeout applies.
    o.server_selection_timeout.get_or_insert(timeout);
    o.connect_timeout.get_or_insert(timeout);
    o.app_name = Some("terraform-provider-circleci".into());
    if let Some(ca) = ca {
        let mut t = match o.tls.take() {
            Some(Tls::Enabled(t)) => t,
            _ => TlsOptions::default(),
        };
        t.ca_file_path = Some(ca.clone());
        o.tls = Some(Tls::Enabled(t));
    }
    Client::with_options(o).map_err(|e| MongoError::command("opening a client", hosts, &e))
}

pub struct MongoAdmin {
    uri: Secret,
    ca: Option<PathBuf>,
    timeout: Duration,
    client: OnceCell<Client>,
}

impl fmt::Debug for MongoAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoAdmin")
            .field("hosts", &hosts_of(&self.uri.0))
            .field("ca", &self.ca)
            .finish()
    }
}

fn roles_doc(roles: &[Role]) -> Vec<Document> {
    roles
        .iter()
        .map(|(r, d)| doc! {"role": r, "db": d})
        .collect()
}

impl MongoAdmin {
    pub fn new(uri: Secret, ca: Option<PathBuf>, timeout: Duration) -> Self {
        MongoAdmin {
            uri,
            ca,
            timeout,
            client: OnceCell::new(),
        }
    }

    /// The CA file the admin connection uses; the CircleCI user's check uses it too.
    pub fn ca(&self) -> Option<&PathBuf> {
        self.ca.as_ref()
    }

    pub fn hosts(&self) -> String {
        hosts_of(&self.uri.0)
    }

    async fn run(&self, db: &str, cmd: Document, what: &str) -> Result<Document, MongoError> {
        let c = self
            .client
            .get_or_try_init(|| client_for(&self.uri.0, self.ca.as_ref(), self.timeout))
            .await?;
        c.database(db)
            .run_command(cmd)
            .await
            .map_err(|e| MongoError::command(what, self.hosts(), &e))
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
        let roles = u
            .get_array("roles")
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
            .unwrap_or_default();
        Ok(Some(roles))
    }

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

    /// Drops the user; Ok(false) when it did not exist.
    pub async fn drop_user(&self, db: &str, name: &str) -> Result<bool, MongoError> {
        let c = self
            .client
            .get_or_try_init(|| client_for(&self.uri.0, self.ca.as_ref(), self.timeout))
            .await?;
        match c.database(db).run_command(doc! {"dropUser": name}).await {
            Ok(_) => Ok(true),
            Err(e) if code(&e) == Some(11) => Ok(false),
            Err(e) => Err(MongoError::command(
                format!("dropping user {name:?}"),
                self.hosts(),
                &e,
            )),
        }
    }
}

/// Logs in with `uri` (the file's own connection string) and checks the user holds
/// `roles`, the way CircleCI will connect.
pub async fn verify(
    uri: &str,
    ca: Option<&PathBuf>,
    auth_db: &str,
    user: &str,
    roles: &[Role],
    timeout: Duration,
) -> Result<(), MongoError> {
    let hosts = hosts_of(uri);
    let c = client_for(uri, ca, timeout).await?;
    let r = c
        .database(auth_db)
        .run_command(doc! {"usersInfo": {"user": user, "db": auth_db}})
        .await
        .map_err(|e| MongoError::command(format!("logging in as {user:?}"), hosts.clone(), &e))?;
    let have: Vec<Role> = r
        .get_array("users")
        .ok()
        .and_then(|u| u.first())
        .and_then(|u| u.as_document())
        .and_then(|u| u.get_array("roles").ok())
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
        .unwrap_or_default();
    let missing: Vec<String> = roles
        .iter()
        .filter(|r| !have.contains(r))
        .map(|(r, d)| format!("{r}@{d}"))
        .collect();
    if !missing.is_empty() {
        return Err(MongoError::MissingRoles {
            user: user.to_string(),
            hosts,
            missing,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hosts_without_credentials() {
        assert_eq!(
            super::hosts_of("mongodb://a:p%40w@m1:27017,m2:27017/db?x=1"),
            "m1:27017,m2:27017"
        );
        assert_eq!(super::hosts_of("mongodb://m1/?x"), "m1");
    }
}
