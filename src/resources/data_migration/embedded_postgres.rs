//! The embedded PostgreSQL on the Services machine, the way CircleCI's export script
//! reaches it: a temporary `postgres:9.5.8` container over the embedded data directory
//! (CircleCI stopped), `pg_dump` per database into an export directory that stays on the
//! machine, and `pg_restore` from there into the external server, run on the Services
//! machine (the side of the network CircleCI itself connects from). Every command is a
//! fixed `docker` command line with quoted arguments; the target's password reaches
//! `pg_restore` on stdin, never on a command line.

use std::time::{Duration, Instant};

use crate::backends::ssh::{CommandOutput, Program, RemoteCommand, ServicesHost};
use crate::circleci::migration::{self as mig, TableStat};
use crate::plugin::{Diagnostic, Diagnostics};
use crate::resources::run_command;
use crate::secret::Secret;

/// Where the export directory is mounted in the temporary container.
pub const EXPORT_MOUNT: &str = "/export";

/// The restore, as one fixed bash script: the password is read from stdin; the
/// connection and file arrive as positional arguments, never spliced into the script.
/// Extensions are left out of the restore: the target's databases already have them
/// (`circleci_postgres_databases` made them), and only a superuser may create some.
const RESTORE: &str = "IFS= read -r PGPASSWORD; export PGPASSWORD PGSSLMODE=\"$6\"; \
     pg_restore -l \"$5\" | grep -v -e ' EXTENSION ' > \"$5.list\" && \
     exec pg_restore --no-owner --no-privileges --single-transaction --exit-on-error \
     -L \"$5.list\" -h \"$1\" -p \"$2\" -U \"$3\" -d \"$4\" \"$5\"";

/// Where the external server is, as the Services machine reaches it.
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a Secret,
    /// libpq's sslmode for the restore's connection.
    pub sslmode: &'a str,
}

/// A running temporary container.
pub struct EmbeddedPostgres<'a> {
    h: &'a ServicesHost,
    name: String,
    deadline: Duration,
}

fn fail(summary: &str, cmd: &RemoteCommand, out: &CommandOutput) -> Diagnostics {
    Diagnostic::error(
        summary,
        format!(
            "`{cmd}` exited with {}:\n{}",
            out.status
                .map_or("a signal".into(), |s| format!("status {s}")),
            out.evidence()
        ),
    )
    .into()
}

impl<'a> EmbeddedPostgres<'a> {
    async fn docker(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<(RemoteCommand, CommandOutput), Diagnostics> {
        docker(self.h, args, stdin, self.deadline).await
    }

    /// Starts the container `name` over the embedded data with `export_dir` mounted,
    /// and waits (within `ready_within`) until it answers.
    pub async fn start(
        h: &'a ServicesHost,
        name: &str,
        export_dir: &str,
        deadline: Duration,
        ready_within: Duration,
    ) -> Result<EmbeddedPostgres<'a>, Diagnostics> {
        let data = format!("{}:{}", mig::PG_DATA, mig::PG_MOUNT);
        let export = format!("{export_dir}:{EXPORT_MOUNT}");
        let args = [
            "run",
            "--name",
            name,
            "-d",
            "-v",
            &data,
            "-v",
            &export,
            mig::PG_IMAGE,
        ];
        let (cmd, out) = docker(h, &args, None, deadline).await?;
        if !out.success() {
            return Err(fail("Could not start the embedded PostgreSQL", &cmd, &out));
        }
        let pg = EmbeddedPostgres {
            h,
            name: name.to_string(),
            deadline,
        };
        let started = Instant::now();
        loop {
            let (_, probe) = pg
                .docker(
                    &["exec", name, "psql", "-U", "postgres", "-Atc", "SELECT 1"],
                    None,
                )
                .await?;
            if probe.success() {
                log::info!("embedded PostgreSQL answers in container {name}");
                return Ok(pg);
            }
            if started.elapsed() >= ready_within {
                let e = Diagnostic::error(
                    "The embedded PostgreSQL did not start",
                    format!(
                        "container {name} did not answer within {}:\n{}",
                        humantime::format_duration(ready_within),
                        probe.evidence()
                    ),
                );
                pg.stop().await;
                return Err(e.into());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One query in `db` through psql in the container; rows of tab-separated text.
    async fn psql(&self, db: &str, sql: &str) -> Result<Vec<Vec<String>>, Diagnostics> {
        let args = [
            "exec", &self.name, "psql", "-U", "postgres", "-X", "-At", "-F", "\t", "-d", db, "-c",
            sql,
        ];
        let (cmd, out) = self.docker(&args, None).await?;
        if !out.success() {
            return Err(fail(
                "A query on the embedded PostgreSQL failed",
                &cmd,
                &out,
            ));
        }
        Ok(out
            .stdout_text()
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect())
    }

    /// Each user table's row count and content digest.
    pub async fn table_stats(&self, db: &str) -> Result<Vec<TableStat>, Diagnostics> {
        let mut stats = Vec::new();
        for row in self.psql(db, mig::TABLES_SQL).await? {
            let table = row.first().cloned().unwrap_or_default();
            let r = self.psql(db, &mig::table_stat_sql(&table)).await?;
            let cols = r.first().cloned().unwrap_or_default();
            stats.push(TableStat {
                table,
                rows: cols.first().and_then(|n| n.parse().ok()).unwrap_or(-1),
                md5: cols.get(1).cloned().unwrap_or_default(),
            });
        }
        Ok(stats)
    }

    /// `pg_dump -Fc` of `db` to EXPORT/<db>.dump.
    pub async fn dump(&self, db: &str) -> Result<String, Diagnostics> {
        let file = format!("{EXPORT_MOUNT}/{db}.dump");
        let args = [
            "exec", &self.name, "pg_dump", "-U", "postgres", "-Fc", "-f", &file, db,
        ];
        let (cmd, out) = self.docker(&args, None).await?;
        if !out.success() {
            return Err(fail(&format!("Could not export database {db}"), &cmd, &out));
        }
        log::info!("exported database {db} to the export directory");
        Ok(file)
    }

    /// Restores EXPORT/<db>.dump into database `into` of the target, as its user.
    pub async fn restore(&self, db: &str, into: &str, t: &Target<'_>) -> Result<(), Diagnostics> {
        let file = format!("{EXPORT_MOUNT}/{db}.dump");
        let port = t.port.to_string();
        let args = [
            "exec", "-i", &self.name, "bash", "-c", RESTORE, "restore", t.host, &port, t.user,
            into, &file, t.sslmode,
        ];
        let mut stdin = t.password.expose().as_bytes().to_vec();
        stdin.push(b'\n');
        let (cmd, out) = self.docker(&args, Some(&stdin)).await?;
        if !out.success() {
            return Err(fail(
                &format!("Could not import database {db} into {}:{}", t.host, t.port),
                &cmd,
                &out,
            ));
        }
        log::info!(
            "imported database {db} into {into} at {}:{}",
            t.host,
            t.port
        );
        Ok(())
    }

    /// Removes the container (its server stops; the data directory stays as it was).
    pub async fn stop(self) {
        if let Err(d) = self.docker(&["rm", "-f", &self.name], None).await {
            log::warn!("removing container {}: {d}", self.name);
        }
    }
}

async fn docker(
    h: &ServicesHost,
    args: &[&str],
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Result<(RemoteCommand, CommandOutput), Diagnostics> {
    run_command(h, Program::Docker, args, stdin, deadline).await
}
