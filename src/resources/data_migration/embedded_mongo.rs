//! The embedded MongoDB on the Services machine, the way CircleCI's export script
//! reaches it: a temporary `mongo:3.6.6` container over `/data/circle/mongo` (CircleCI
//! stopped), `mongodump` per database into the export directory, and `mongorestore` from
//! there into the external MongoDB, run on the Services machine (the side of the
//! network CircleCI connects from) in a second container of the target's release
//! (`restore_image`): 3.6's tools speak opcodes MongoDB 5.1 removed. Every command is a fixed `docker` command line with
//! quoted arguments; the target's password reaches `mongorestore` on stdin (the tools
//! read it from there when it is not on the command line and stdin is no terminal).

use std::time::Duration;

use super::container::{rows_of, Container, EXPORT_MOUNT, PRIVATE_EXEC};
use crate::backends::ssh::ServicesHost;
use crate::circleci::migration::{self as mig, TableStat};
use crate::plugin::{Diagnostic, Diagnostics};
use crate::secret::Secret;

/// Where the dumps go under the export directory: `mongo/DB/COLLECTION.bson` and
/// `.metadata.json`, as mongodump lays them out.
pub(crate) const DUMP_DIR: &str = "mongo";
/// Where `ca_file` is mounted in the container (read-only).
pub(crate) const CA_MOUNT: &str = "/etc/circleci-data-migration/mongo-ca.pem";
/// The image's own CA bundle: the tools verify nothing without `--sslCAFile`, so it is
/// always given, this one when no `ca_file` is.
pub(crate) const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The external MongoDB, as the Services machine reaches it.
pub(crate) struct MongoTarget<'a> {
    pub hosts: &'a [String],
    pub replica_set: Option<&'a str>,
    pub username: &'a str,
    pub auth_source: &'a str,
    pub password: &'a Secret,
    pub tls: bool,
    /// Whether a CA file is mounted at [`CA_MOUNT`].
    pub ca_file: bool,
}

impl MongoTarget<'_> {
    /// `--host` as the tools take it: `HOST:PORT`, or `SET/HOST:PORT,...` for a
    /// replica set.
    pub(crate) fn host_arg(&self) -> String {
        let seeds = self.hosts.join(",");
        match self.replica_set {
            Some(rs) if !rs.is_empty() => format!("{rs}/{seeds}"),
            _ => seeds,
        }
    }

    /// Where the target is, for messages.
    pub(crate) fn describe(&self) -> String {
        self.host_arg()
    }
}

/// `mongorestore`'s arguments for database `db` from `dir` (`--opt=value` throughout,
/// so that no value can pass for an option); no password: it comes on stdin.
pub(crate) fn restore_args(t: &MongoTarget<'_>, db: &str, dir: &str, drop: bool) -> Vec<String> {
    let mut a = vec![
        "mongorestore".to_string(),
        format!("--host={}", t.host_arg()),
        format!("--username={}", t.username),
        format!("--authenticationDatabase={}", t.auth_source),
    ];
    if t.tls {
        a.push("--ssl".into());
        let ca = if t.ca_file { CA_MOUNT } else { SYSTEM_CA };
        a.push(format!("--sslCAFile={ca}"));
    }
    if drop {
        a.push("--drop".into());
    }
    a.push(format!("--db={db}"));
    a.push(dir.to_string());
    a
}

/// `docker exec NAME mongo ...` with the migration's counting script for `db`.
fn shell_args<'s>(name: &'s str, db: &'s str) -> [&'s str; 8] {
    [
        "exec",
        name,
        "mongo",
        "--quiet",
        "--norc",
        db,
        "--eval",
        mig::MONGO_STATS_SCRIPT,
    ]
}

/// A running temporary container of the embedded MongoDB, and the restore's container
/// next to it (the target's tools, the same export mounted).
pub(crate) struct EmbeddedMongo<'a> {
    pub(super) c: Container<'a>,
    tools: Container<'a>,
}

impl<'a> std::ops::Deref for EmbeddedMongo<'a> {
    type Target = Container<'a>;
    fn deref(&self) -> &Container<'a> {
        &self.c
    }
}

impl<'a> EmbeddedMongo<'a> {
    /// Starts container `name` of `image` over `data_dir` with `export_dir` mounted,
    /// and waits within `ready_within` until its shell answers; then the restore's
    /// container of `restore_image` with the export and `ca_file` (read-only).
    pub(crate) async fn start(
        h: &'a ServicesHost,
        (name, image, data_dir): (&str, &str, &str),
        (export_dir, restore_image): (&str, &str),
        ca_file: Option<&str>,
        deadline: Duration,
        ready_within: Duration,
    ) -> Result<EmbeddedMongo<'a>, Diagnostics> {
        let mounts = [
            format!("{data_dir}:{}", mig::MONGO_MOUNT),
            format!("{export_dir}:{EXPORT_MOUNT}"),
        ];
        let c = Container::run(
            h,
            (name, image, &[]),
            &mounts,
            deadline,
            "the embedded MongoDB",
        )
        .await?;
        let probe = shell_args(name, "admin");
        let mut mounts = vec![format!("{export_dir}:{EXPORT_MOUNT}")];
        if let Some(ca) = ca_file {
            mounts.push(format!("{ca}:{CA_MOUNT}:ro"));
        }
        let restore = format!("{name}-restore");
        let (c, tools) = super::tools::beside(
            c.wait_ready(&probe, ready_within, "the embedded MongoDB", image),
            super::tools::start(
                h,
                &restore,
                restore_image,
                &mounts,
                deadline,
                "mongorestore",
            ),
        )
        .await?;
        Ok(EmbeddedMongo { c, tools })
    }

    /// Every collection of the embedded `db` with its document count and dbHash md5
    /// (none when the database does not exist).
    pub(crate) async fn stats(&self, db: &str) -> Result<Vec<TableStat>, Diagnostics> {
        let args = shell_args(&self.c.name, db);
        let (cmd, out) = self
            .exec(
                &args[2..],
                None,
                &format!("Could not count the embedded database {db}"),
            )
            .await?;
        let mut stats = mig::parse_stats(&rows_of(&out)).map_err(|e| {
            Diagnostic::error(
                "Unexpected answer from the embedded MongoDB",
                format!("`{cmd}`: {e}"),
            )
        })?;
        stats.retain(|s| !s.table.starts_with("system."));
        Ok(stats)
    }

    /// Dumps `db` into EXPORT/mongo/DB, after removing what an earlier run left there.
    pub(crate) async fn dump(&self, db: &str) -> Result<(), Diagnostics> {
        self.remove(&[format!("{DUMP_DIR}/{db}")]).await?;
        let out = format!("--out={EXPORT_MOUNT}/{DUMP_DIR}");
        let dbarg = format!("--db={db}");
        // Under umask 077: the dump is private from its first byte.
        self.exec(
            &[
                "bash",
                "-c",
                PRIVATE_EXEC,
                "private",
                "mongodump",
                &dbarg,
                &out,
            ],
            None,
            &format!("Could not export database {db}"),
        )
        .await
        .map(|_| ())
    }

    /// Restores EXPORT/mongo/DB into the target's `db` as the target's user (with
    /// `drop`, each collection there is dropped first).
    pub(crate) async fn restore(
        &self,
        db: &str,
        t: &MongoTarget<'_>,
        drop: bool,
    ) -> Result<(), Diagnostics> {
        let dir = format!("{EXPORT_MOUNT}/{DUMP_DIR}/{db}");
        let args = restore_args(t, db, &dir, drop);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut stdin = t.password.expose().as_bytes().to_vec();
        stdin.push(b'\n');
        self.tools
            .exec(
                &argv,
                Some(&stdin),
                &format!("Could not import database {db} into {}", t.describe()),
            )
            .await
            .map(|_| ())
    }

    /// Removes both containers (the server stops; the data directory stays as it was);
    /// whether both are gone.
    pub(crate) async fn stop(self) -> bool {
        let (c, tools) = tokio::join!(self.c.stop(), self.tools.stop());
        c && tools
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target<'a>(hosts: &'a [String], rs: Option<&'a str>, p: &'a Secret) -> MongoTarget<'a> {
        MongoTarget {
            hosts,
            replica_set: rs,
            username: "circle",
            auth_source: "admin",
            password: p,
            tls: true,
            ca_file: false,
        }
    }

    #[test]
    fn restore_arguments_verify_tls_and_keep_the_password_off() {
        let p = Secret::new("s3cret");
        let hosts = vec!["a.internal:27017".to_string(), "b.internal:27018".into()];
        let t = target(&hosts, Some("rs0"), &p);
        let a = restore_args(&t, "circle_ghe", "/export/mongo/circle_ghe", false);
        assert_eq!(a[1], "--host=rs0/a.internal:27017,b.internal:27018");
        assert!(a.contains(&format!("--sslCAFile={SYSTEM_CA}")));
        assert!(!a.iter().any(|x| x.contains("s3cret") || x == "--drop"));
        assert_eq!(
            a.last().map(String::as_str),
            Some("/export/mongo/circle_ghe")
        );
        let one = vec!["m:27017".to_string()];
        let mut t = target(&one, None, &p);
        t.ca_file = true;
        t.tls = true;
        let a = restore_args(&t, "x", "/d", true);
        assert_eq!(a[1], "--host=m:27017");
        assert!(a.contains(&format!("--sslCAFile={CA_MOUNT}")) && a.contains(&"--drop".into()));
        t.tls = false;
        assert!(!restore_args(&t, "x", "/d", false)
            .iter()
            .any(|x| x.starts_with("--ssl")));
    }
}
