//! The embedded PostgreSQL on the Services machine, the way CircleCI's export script
//! reaches it: a temporary `postgres:9.5.8` container over the embedded data directory
//! (CircleCI stopped), `pg_dump` per database into an export directory that stays on the
//! machine, and `pg_restore` from there into the external server, run on the Services
//! machine (the side of the network CircleCI itself connects from) in a second
//! container of the target's release (`restore_image`): 9.5's client cannot log in
//! with SCRAM. Every command is a
//! fixed `docker` command line with quoted arguments; the target's password reaches
//! `pg_restore` on stdin, never on a command line.

use std::time::Duration;

use super::container::{fail, rows_of, Container, JobPool};
pub use super::container::{ExportFile, EXPORT_MOUNT};
use crate::backends::ssh::{CommandOutput, ServicesHost};
use crate::circleci::migration::{self as mig, TableStat};
use crate::plugin::{Diagnostic, Diagnostics};
use crate::secret::Secret;

/// How a job of the loops below ends: the job runs in a subshell with its stdin at
/// `/dev/null` (what is left on stdin is the next jobs' lines), then its status and the
/// command's mark (`$m`) frame it on stdout, the mark alone on stderr (see
/// `backends::ssh::jobs`).
macro_rules! end_job {
    () => {
        " < /dev/null; s=$?; printf '\\n%s\\t%s\\n' \"$m\" \"$s\"; printf '\\n%s\\n' \"$m\" >&2; done"
    };
}

/// The databases exported, one job each (issue 28: one `docker exec` per worker, not
/// per database): a job is the line `DATABASE<TAB>FILE`; `pg_dump -Fc` writes FILE in
/// the export directory (a new file: one an earlier run left is removed first, so that
/// the umask makes it private from its first byte) while psql reads every table's count
/// and checksum (`$1` the export directory, `$2` field separator, `$3` the stats query,
/// `$4` the zlib level: `postgres.compression`, `$5` the mark). Exit 91: `pg_dump`
/// failed.
const EXPORT: &str = concat!(
    "umask 077; m=$5; cd \"$1\" || exit 1; ",
    "while IFS=$'\\t' read -r db f; do ( rm -f \"$f\" || exit 1; ",
    "pg_dump -U postgres -Fc -Z \"$4\" -f \"$f\" \"$db\" & p=$!; \
     psql -U postgres -X -q -At -v ON_ERROR_STOP=1 -F \"$2\" -d \"$db\" -c \"$3\"; s=$?; \
     wait $p || exit 91; exit $s )",
    end_job!()
);

/// The readiness probe: tries 50 ms apart within one `docker exec` for one to two
/// seconds (bash's `SECONDS` counts whole seconds; 9.5's image has no finer clock in
/// bash), then lists the databases with their sizes (`$1` field separator, `$2`
/// [`DATABASES_SQL`]): the answer the migration needs first, in the same exec, so that
/// no second round trip stands between the server's start and the first export. When
/// the server still refuses, that listing's refusal is the evidence. A server over a
/// cleanly stopped data directory answers within a second, so the downtime does not
/// wait for the next outer probe (250 ms apart, each a round trip). The probe ends
/// well within `MIN_PROBE`, the least deadline a probe gets.
const WAIT_READY: &str = "s=$SECONDS; until psql -U postgres -Atc 'SELECT 1' >/dev/null 2>&1; do \
     [ $((SECONDS - s)) -ge 2 ] && break; sleep 0.05; done; \
     exec psql -U postgres -X -q -At -v ON_ERROR_STOP=1 -F \"$1\" -d postgres -c \"$2\"";

/// The embedded server's databases, their sizes in bytes, and whether it stores
/// timestamps as integers (`integer_datetimes`, on each line).
const DATABASES_SQL: &str =
    "SELECT datname, pg_database_size(datname), current_setting('integer_datetimes') \
     FROM pg_database WHERE NOT datistemplate ORDER BY 1";

/// Where `ca_file` (the target's CA) is mounted in the container, read-only.
macro_rules! pg_ca_mount {
    () => {
        "/etc/circleci-data-migration/pg-ca.pem"
    };
}
/// Where the target's CA certificate is mounted in the restore's container.
pub const CA_MOUNT: &str = pg_ca_mount!();

/// How the target's scripts begin: the password from stdin, the sslmode, and the CA
/// when one is mounted.
macro_rules! target_env {
    () => {
        concat!(
            "IFS= read -r PGPASSWORD; export PGPASSWORD PGSSLMODE=\"$5\"; if [ -r ",
            pg_ca_mount!(),
            " ]; then export PGSSLROOTCERT=",
            pg_ca_mount!(),
            "; fi; "
        )
    };
}

/// The target's scripts run as its user, in the restore's container: the password
/// from stdin; `$1`..`$4` host, port, user, database, `$5` sslmode, `$6` field
/// separator, `$7` the provider's own SQL (never the user's); the CA at [`CA_MOUNT`]
/// when one is mounted. This one prints every table's count and checksum (or what
/// `$7` selects: the tools' check before the stop reads the target's `integer_datetimes`
/// through it).
pub(super) const STATS_ON_TARGET: &str = concat!(
    target_env!(),
    "exec psql -X -q -At -v ON_ERROR_STOP=1 -F \"$6\" -h \"$1\" -p \"$2\" -U \"$3\" -d \"$4\" -c \"$7\""
);

/// The lines of `pg_restore -l` (`ID; TABLEOID OID DESC NAMESPACE TAG OWNER`) whose
/// entries the restore leaves out, as one extended regular expression: extensions and
/// their comments (the target's databases already have them: `circleci_postgres_databases`
/// made them, and only a superuser may create some), and what initdb made, which a 9.x
/// `pg_dump` writes and only a 9.x `pg_restore` skipped by itself: `CREATE SCHEMA public`
/// (11 and later run it, and it fails: the schema exists) and its comment (only the
/// schema's owner may set it): the schema's name then one word, its owner (the list
/// prints names unquoted: a schema named `public x` is not this one). The ACLs go with
/// `--no-privileges`.
macro_rules! leave_out {
    () => {
        "^[0-9]+; [0-9]+ [0-9]+ (EXTENSION - |COMMENT - EXTENSION |(SCHEMA - public|COMMENT - SCHEMA public) [^ ]*$)"
    };
}

/// The databases imported, one job each (see [`EXPORT`]): a job is the line
/// `DATABASE<TAB>DUMP<TAB>clean|keep`, `clean` to drop the dump's objects in the target
/// first (overwrite_existing). It prints the dump's SHA-256, read by a second process
/// next to the restore so that no later step waits on it (one line `sha256<TAB>HEX`,
/// or `-` when the image has no digest tool that answered: the seal reads it then),
/// its size (`size<TAB>BYTES`, once its restore list is removed; `-` when either
/// failed: the seal does both then), the restore's start and end
/// (`restore<TAB>T0<TAB>T1`, bash's `EPOCHREALTIME`: the rest of the job is the
/// comparison), then every table's count and checksum as
/// [`STATS_ON_TARGET`] does. What `leave_out!` names is left out of the restore. The
/// password is the command's first line; `$1`..`$3` host, port, user, `$4` the export
/// directory, `$5` sslmode, `$6` field separator, `$7` the stats query, `$8` the mark.
/// Exit 90: the restore failed (nothing of it was committed; the digest is stopped).
const IMPORT: &str = concat!(
    "umask 077; ",
    target_env!(),
    "LEAVE='",
    leave_out!(),
    "'; m=$8; cd \"$4\" || exit 1; ",
    "while IFS=$'\\t' read -r db f clean; do ( ",
    "if command -v openssl >/dev/null; then exec 3< <(openssl dgst -sha256 -r \"$f\" 2>/dev/null); \
     else exec 3< <(sha256sum \"$f\" 2>/dev/null); fi; d=$!; \
     pg_restore -l \"$f\" | grep -Ev -e \"$LEAVE\" > \"$f.list\" || { kill $d 2>/dev/null; exit 90; }; \
     C=; [ \"$clean\" = clean ] && C='--clean --if-exists'; t0=$EPOCHREALTIME; \
     pg_restore $C --no-owner --no-privileges --single-transaction --exit-on-error \
     -L \"$f.list\" -h \"$1\" -p \"$2\" -U \"$3\" -d \"$db\" \"$f\" || { kill $d 2>/dev/null; exit 90; }; \
     t1=$EPOCHREALTIME; \
     IFS=' ' read -r H _ <&3 && [ ${#H} = 64 ] || H=-; printf 'sha256\\t%s\\n' \"$H\"; \
     rm -f \"$f.list\" && Z=$(stat -c %s \"$f\") || Z=-; printf 'size\\t%s\\n' \"$Z\"; \
     printf 'restore\\t%s\\t%s\\n' \"${t0:--}\" \"${t1:--}\"; \
     exec psql -X -q -At -v ON_ERROR_STOP=1 -F \"$6\" -h \"$1\" -p \"$2\" -U \"$3\" -d \"$db\" -c \"$7\" )",
    end_job!()
);

/// Where the external server is, as the Services machine reaches it.
pub struct Target<'a> {
    /// Its host, as the Services machine reaches it.
    pub host: &'a str,
    /// Its port.
    pub port: u16,
    /// The role the restore logs in as.
    pub user: &'a str,
    /// That role's password.
    pub password: &'a Secret,
    /// libpq's sslmode for the restore's connection.
    pub sslmode: &'a str,
}

/// The embedded server: which image over which data directory, in a container of
/// which name; and the image of the restore's tools.
pub struct Source<'a> {
    /// The embedded PostgreSQL's image.
    pub image: &'a str,
    /// The image with the target's client tools.
    pub restore_image: &'a str,
    /// The embedded data directory on the Services machine.
    pub data_dir: &'a str,
    /// The temporary container's name.
    pub container: &'a str,
    /// The target's CA on the Services machine, mounted read-only at [`CA_MOUNT`].
    pub ca_file: Option<&'a str>,
    /// Whether the target stores timestamps as integers (`integer_datetimes`): with
    /// the embedded server's, whether the checksums hash them by value.
    pub target_integer_datetimes: bool,
}

/// A running temporary container of the embedded PostgreSQL, and the restore's
/// container next to it (the target's client tools, the same export mounted).
pub struct EmbeddedPostgres<'a> {
    pub(super) c: Container<'a>,
    tools: Container<'a>,
    /// The databases the server has, with their sizes in bytes, as its readiness
    /// probe listed them.
    present: Vec<(String, u64)>,
    /// Whether both servers store timestamps as integers, so that the checksums hash
    /// them by value ([`mig::stats_sql`]).
    timestamps_by_value: bool,
    /// The exports' commands ([`EXPORT`]), by the zlib level they write.
    exports: JobPool<'a, String>,
    /// The imports' commands ([`IMPORT`]), by the target they log in to.
    imports: JobPool<'a, TargetKey>,
}

/// What an import's command is started with: the target's host, port, user, sslmode
/// and password.
type TargetKey = (String, u16, String, String, Secret);

/// How many commands of each kind wait idle between jobs when `workers` carry
/// PostgreSQL databases and `parallelism` databases of both parts are under way at
/// most: one per worker, as long as the idle ones of both kinds leave the connection's
/// sessions enough for a command of each database under way and one more (a seal, a
/// probe), else fewer (down to none: a command per job).
pub(super) fn jobs_kept(workers: usize, parallelism: usize) -> usize {
    let spare = crate::backends::ssh::EXEC_SESSIONS.saturating_sub(1 + parallelism) / 2;
    spare.min(workers)
}

impl<'a> std::ops::Deref for EmbeddedPostgres<'a> {
    type Target = Container<'a>;
    fn deref(&self) -> &Container<'a> {
        &self.c
    }
}

/// One database exported: its dump in the export directory, its size and tables.
pub struct Exported {
    /// The database's name.
    pub db: String,
    /// The dump's size in bytes.
    pub size: u64,
    /// Each table's row count and checksum, read from the source.
    pub source: Vec<TableStat>,
    /// The dump's name in the export directory.
    pub file: String,
}

impl<'a> EmbeddedPostgres<'a> {
    /// Starts the container `name` over the embedded data at `data_dir` (image
    /// `image`) with `export_dir` mounted, and waits (within `ready_within`) until it
    /// answers. A container of that name left by an interrupted run is removed when it
    /// takes the name (see [`Container::run`]).
    pub async fn start(
        h: &'a ServicesHost,
        source: &Source<'_>,
        export_dir: &str,
        deadline: Duration,
        ready_within: Duration,
    ) -> Result<EmbeddedPostgres<'a>, Diagnostics> {
        let name = source.container;
        let mounts = [
            format!("{}:{}", source.data_dir, mig::PG_MOUNT),
            format!("{export_dir}:{EXPORT_MOUNT}"),
        ];
        let c = Container::run(
            h,
            (name, source.image, &[]),
            &mounts,
            deadline,
            "the embedded PostgreSQL",
        )
        .await?;
        let probe = [
            "exec",
            name,
            "bash",
            "-c",
            WAIT_READY,
            "ready",
            "\t",
            DATABASES_SQL,
        ];
        let mut mounts = vec![format!("{export_dir}:{EXPORT_MOUNT}")];
        if let Some(ca) = source.ca_file {
            mounts.push(format!("{ca}:{CA_MOUNT}:ro"));
        }
        let restore = format!("{name}-restore");
        let mut present = Vec::new();
        let mut integer_datetimes = false;
        let (c, tools) = super::tools::beside(
            async {
                let (c, listed) = c
                    .wait_answer(
                        &probe,
                        ready_within,
                        "the embedded PostgreSQL",
                        source.image,
                    )
                    .await?;
                (present, integer_datetimes) = databases_of(&listed);
                Ok(c)
            },
            super::tools::start(
                h,
                &restore,
                source.restore_image,
                &mounts,
                deadline,
                "pg_restore",
            ),
        )
        .await?;
        Ok(EmbeddedPostgres {
            c,
            tools,
            present,
            timestamps_by_value: integer_datetimes && source.target_integer_datetimes,
            exports: JobPool::new(1),
            imports: JobPool::new(1),
        })
    }

    /// The databases the embedded server has, with their sizes in bytes (read when it
    /// first answered).
    pub fn databases(&self) -> &[(String, u64)] {
        &self.present
    }

    /// Whether both servers store timestamps as integers, so that the checksums hash
    /// them by value.
    pub fn timestamps_by_value(&self) -> bool {
        self.timestamps_by_value
    }

    /// The statement both sides' counts and checksums come from.
    fn stats_sql(&self) -> &'static str {
        mig::stats_sql(self.timestamps_by_value)
    }

    /// How many commands of each kind wait idle between jobs (1 unless set): see
    /// [`jobs_kept`].
    pub fn keep_jobs(&mut self, keep: usize) {
        self.exports.keep(keep);
        self.imports.keep(keep);
    }

    /// Ends the commands waiting for jobs (at once); the next job starts its own.
    pub async fn end_jobs(&self) {
        tokio::join!(
            self.exports.close(self.c.deadline),
            self.imports.close(self.tools.deadline)
        );
    }

    /// Exports `db` to EXPORT/<db>.dump at zlib level `compression`; its size (as the
    /// readiness probe listed it), its tables and the file's name.
    pub async fn export(&self, db: &str, compression: u8) -> Result<Exported, Diagnostics> {
        let Some(size) = self.present.iter().find(|(d, _)| d == db).map(|(_, n)| *n) else {
            return Err(Diagnostic::error(
                format!("Could not export database {db}"),
                format!("the embedded PostgreSQL has no database {db}"),
            )
            .into());
        };
        let level = compression.min(9).to_string();
        let name = format!("{db}.dump");
        let (cmd, out) = self
            .exports
            .run(level.clone(), &[db, &name], self.c.deadline, || async {
                let args = [EXPORT_MOUNT, "\t", self.stats_sql(), &level];
                self.c.start_jobs(EXPORT, &args, None).await
            })
            .await?;
        if !out.success() {
            return Err(fail(&format!("Could not export database {db}"), &cmd, &out));
        }
        let rows = rows_of(&out);
        let Ok(tables) = mig::parse_stats(&rows) else {
            return Err(Diagnostic::error(
                "Unexpected answer from the embedded PostgreSQL",
                format!("`{cmd}` printed:\n{}", out.evidence()),
            )
            .into());
        };
        Ok(Exported {
            db: db.to_string(),
            size,
            source: tables,
            file: name,
        })
    }

    /// Runs `script` (one of the target's scripts above) for database `db` of the
    /// target from the restore's container, the Services machine's side of the
    /// network, `rest` after the common arguments; the lines it printed. A failure is
    /// an error under the summary `failed` makes of the output.
    async fn on_target(
        &self,
        script: &str,
        db: &str,
        t: &Target<'_>,
        rest: &[&str],
        failed: impl Fn(&CommandOutput) -> String,
    ) -> Result<Vec<Vec<String>>, Diagnostics> {
        let port = t.port.to_string();
        let mut args = vec![
            "exec",
            "-i",
            &self.tools.name,
            "bash",
            "-c",
            script,
            "target",
            t.host,
            &port,
            t.user,
            db,
            t.sslmode,
            "\t",
            self.stats_sql(),
        ];
        args.extend_from_slice(rest);
        let (cmd, out) = self.tools.docker(&args, Some(&password_line(t)?)).await?;
        if !out.success() {
            return Err(fail(&failed(&out), &cmd, &out));
        }
        Ok(rows_of(&out))
    }

    /// Each user table's row count and content checksum in the target's `db`.
    pub async fn target_stats(
        &self,
        db: &str,
        t: &Target<'_>,
    ) -> Result<Vec<TableStat>, Diagnostics> {
        let rows = self
            .on_target(STATS_ON_TARGET, db, t, &[], |_| {
                format!("A query in database {db} at {}:{} failed", t.host, t.port)
            })
            .await?;
        stats_of(&rows, t)
    }

    /// Restores EXPORT/<db>.dump into database `into` of the target, as its user (with
    /// `clean`, the dump's objects already there are dropped first); the dump's
    /// SHA-256 (none when the image could not read it: the seal does), and every
    /// table's count and checksum there.
    pub async fn import(
        &self,
        db: &str,
        into: &str,
        t: &Target<'_>,
        clean: bool,
    ) -> Result<Imported, Diagnostics> {
        let file = format!("{db}.dump");
        let mode = if clean { "clean" } else { "keep" };
        let key = (
            t.host.to_string(),
            t.port,
            t.user.to_string(),
            t.sslmode.to_string(),
            t.password.clone(),
        );
        let (cmd, out) = self
            .imports
            .run(key, &[into, &file, mode], self.tools.deadline, || async {
                let port = t.port.to_string();
                let args = [
                    t.host,
                    &port,
                    t.user,
                    EXPORT_MOUNT,
                    t.sslmode,
                    "\t",
                    self.stats_sql(),
                ];
                self.tools
                    .start_jobs(IMPORT, &args, Some(&password_line(t)?))
                    .await
            })
            .await?;
        if !out.success() {
            let summary = match out.status {
                Some(90) => format!("Could not import database {db} into {}:{}", t.host, t.port),
                _ => format!(
                    "Could not check database {into} at {}:{} after the import",
                    t.host, t.port
                ),
            };
            return Err(fail(&summary, &cmd, &out));
        }
        let rows = rows_of(&out);
        match rows.split_first() {
            Some((first, rest)) if first.len() == 2 && first[0] == "sha256" => {
                let sha = &first[1];
                let hex = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
                // Each line its own key, in this order; one missing is unknown.
                let (size, rest) = keyed(rest, "size");
                let (restore, rest) = keyed(rest, "restore");
                Ok(Imported {
                    sha256: hex.then(|| sha.to_ascii_lowercase()),
                    size: size.and_then(|r| r.get(1)?.parse().ok()),
                    tables: stats_of(rest, t)?,
                    restore: restore.and_then(restore_time),
                })
            }
            _ => Err(Diagnostic::error(
                format!("Unexpected answer from {}:{}", t.host, t.port),
                format!("the import of database {db} printed no SHA-256 of its dump first"),
            )
            .into()),
        }
    }
}

/// What one import did: the dump's SHA-256 (none when the image could not read it:
/// the seal does), every table's count and checksum on the target, and how long the
/// restore itself took (the rest of the command is the comparison; none when the
/// image's shell cannot tell).
#[derive(Debug)]
pub struct Imported {
    /// The dump's SHA-256.
    pub sha256: Option<String>,
    /// The dump's size in bytes, read once its restore list was removed (none when
    /// either failed: the seal does both).
    pub size: Option<u64>,
    /// Every table's count and checksum on the target, after the restore.
    pub tables: Vec<TableStat>,
    /// How long `pg_restore` took.
    pub restore: Option<Duration>,
}

/// The first of `rows` when its first field is `key`, and the rows after it (all of
/// them when it is not).
fn keyed<'r>(rows: &'r [Vec<String>], key: &str) -> (Option<&'r [String]>, &'r [Vec<String>]) {
    match rows.split_first() {
        Some((r, more)) if r.first().is_some_and(|k| k == key) => (Some(r), more),
        _ => (None, rows),
    }
}

/// The restore's time from its `restore<TAB>T0<TAB>T1` line (seconds, as bash's
/// `EPOCHREALTIME` prints them; `-` when the shell has none).
fn restore_time(line: &[String]) -> Option<Duration> {
    let at = |i: usize| line.get(i)?.parse::<f64>().ok();
    let secs = at(2)? - at(1)?;
    Duration::try_from_secs_f64(secs).ok()
}

/// The `name<TAB>size<TAB>integer_datetimes` lines of [`DATABASES_SQL`]: the
/// databases and their sizes, and whether every line said `on` (and there was one).
fn databases_of(out: &CommandOutput) -> (Vec<(String, u64)>, bool) {
    let mut integer = true;
    let dbs: Vec<(String, u64)> = rows_of(out)
        .into_iter()
        .filter_map(|r| match r.as_slice() {
            [name, size, integer_datetimes] => {
                integer &= integer_datetimes == "on";
                Some((name.clone(), size.parse().unwrap_or(0)))
            }
            _ => None,
        })
        .collect();
    let integer = integer && !dbs.is_empty();
    (dbs, integer)
}

/// The tables' figures among the lines a script on the target printed.
fn stats_of(rows: &[Vec<String>], t: &Target<'_>) -> Result<Vec<TableStat>, Diagnostics> {
    mig::parse_stats(rows).map_err(|e| {
        Diagnostic::error(format!("Unexpected answer from {}:{}", t.host, t.port), e).into()
    })
}

impl EmbeddedPostgres<'_> {
    /// Removes both containers (the server stops; the data directory stays as it was);
    /// whether both are gone.
    pub async fn stop(self) -> bool {
        // The commands waiting for jobs end as the containers go (`docker rm -f` would
        // end them too): the downtime waits for neither one after the other.
        let EmbeddedPostgres {
            c,
            tools,
            exports,
            imports,
            ..
        } = self;
        let (d, t) = (c.deadline, tools.deadline);
        let (_, _, c, tools) =
            tokio::join!(exports.close(d), imports.close(t), c.stop(), tools.stop());
        c && tools
    }
}

/// The target's password and a newline: what the fixed scripts read first on stdin.
/// A password with a line break is refused (validation refuses it first): the scripts
/// read one line, and the import's would take the rest for jobs.
pub(super) fn password_line(t: &Target<'_>) -> Result<Vec<u8>, Diagnostics> {
    if t.password.expose().contains(['\n', '\r']) {
        return Err(Diagnostic::error(
            "Invalid password",
            format!(
                "the password of {} at {}:{} holds a line break; the restore's tools read it as one line",
                t.user, t.host, t.port
            ),
        )
        .into());
    }
    let mut stdin = t.password.expose().as_bytes().to_vec();
    stdin.push(b'\n');
    Ok(stdin)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs [`WAIT_READY`] with a `psql` that refuses its first `fails` tries; how many
    /// tries it made, the outcome and how long it took.
    fn probe(fails: u32) -> (u32, std::process::Output, Duration) {
        let dir = tempfile::tempdir().unwrap();
        tool(
            dir.path(),
            "psql",
            "n=$(( $(cat \"$0.n\" 2>/dev/null || echo 0) + 1 )); echo $n > \"$0.n\"\n\
             [ $n -gt \"$FAILS\" ] && { printf '%s\\n' \"$@\"; exit 0; }\n\
             echo \"psql: could not connect to server (try $n)\" >&2; exit 2",
        );
        let started = std::time::Instant::now();
        let out = std::process::Command::new("bash")
            .args(["-c", WAIT_READY, "ready", "\t", DATABASES_SQL])
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .env("FAILS", fails.to_string())
            .output()
            .unwrap();
        let took = started.elapsed();
        let tries = std::fs::read_to_string(dir.path().join("psql.n"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (tries, out, took)
    }

    /// Writes executable `name` holding `body` (a shell script) into `dir`.
    fn tool(dir: &std::path::Path, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Runs `script` (a job loop) with the tools in `bin`, `args` and `stdin`.
    fn jobs(bin: &std::path::Path, script: &str, args: &[&str], stdin: &str) -> (String, String) {
        use std::io::Write;
        let mut c = std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("jobs")
            .args(args)
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    #[test]
    fn commands_are_kept_between_jobs_only_while_sessions_are_left_for_the_rest() {
        // One per worker at the default parallelism; fewer as the parallelism grows,
        // none from 7 on (sshd's ten sessions, one of them the SFTP channel), and
        // never more than the PostgreSQL part's workers.
        let kept: Vec<usize> = (1..=8).map(|p| jobs_kept(p, p)).collect();
        assert_eq!(kept, [1, 2, 2, 2, 1, 1, 0, 0]);
        assert_eq!(jobs_kept(1, 8), 0);
        assert_eq!(jobs_kept(2, 4), 2);
        for p in 1..=64 {
            for w in 0..=p {
                let k = jobs_kept(w, p);
                // Both kinds' idle commands, a command of each database under way (in
                // either part) and one more within the sessions.
                assert!(k <= w, "{w} {p}");
                assert!(
                    p > 8 || 2 * k + p < crate::backends::ssh::EXEC_SESSIONS,
                    "{w} {p}"
                );
            }
        }
    }

    /// Issue 28: one command exports database after database. Each job is framed on
    /// both streams with its own status, a failed one does not end the loop, and no
    /// job's program reads the lines of the jobs after it (`psql` here reads stdin).
    #[test]
    fn the_export_loop_frames_each_job_and_goes_on_after_a_failure() {
        let bin = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        tool(
            bin.path(),
            "pg_dump",
            "for a; do f=$prev; prev=$a; [ \"$f\" = -f ] && out=$a; done\n\
             [ \"$a\" = bad ] && { echo \"pg_dump: error: $a\" >&2; exit 1; }\n\
             echo \"dump of $a at $5\" > \"$out\"",
        );
        tool(
            bin.path(),
            "psql",
            "cat >/dev/null; for a; do :; done; printf 'table\\tpublic.%s\\t3\\tabc\\n' \"$(echo \"$a\" | cut -c1-4)\"",
        );
        // A dump an earlier run left readable is not written into as it is.
        use std::os::unix::fs::PermissionsExt;
        let old = dir.path().join("circle.dump");
        std::fs::write(&old, "old").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let m = "0123456789abcdef0123456789abcdef";
        let export = dir.path().to_str().unwrap();
        let (out, err) = jobs(
            bin.path(),
            EXPORT,
            &[export, "\t", "SELECT stats", "6", m],
            "circle\tcircle.dump\nbad\tbad.dump\nvms\tvms.dump\n",
        );
        assert_eq!(
            out,
            format!(
                "table\tpublic.SELE\t3\tabc\n\n{m}\t0\n\
                 table\tpublic.SELE\t3\tabc\n\n{m}\t91\n\
                 table\tpublic.SELE\t3\tabc\n\n{m}\t0\n"
            )
        );
        assert_eq!(err, format!("\n{m}\npg_dump: error: bad\n\n{m}\n\n{m}\n"));
        for db in ["circle", "vms"] {
            let f = dir.path().join(format!("{db}.dump"));
            assert_eq!(
                std::fs::read_to_string(&f).unwrap(),
                format!("dump of {db} at 6\n")
            );
            assert_eq!(
                std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    /// The import's loop: the password read once, before the first job, and every
    /// job's restore and comparison logging in with it; each job framed, a failed
    /// restore (exit 90) followed by the next job.
    #[test]
    fn the_import_loop_reads_the_password_once_and_frames_each_job() {
        let bin = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // `-l` lists an extension (left out) and a table; a restore of "bad" fails.
        tool(
            bin.path(),
            "pg_restore",
            "case \"$1\" in -l) printf '1; 0 0 EXTENSION - plpgsql \\n2; 0 0 TABLE public t u\\n'; exit 0;; esac\n\
             for a; do f=$prev; prev=$a; [ \"$f\" = -d ] && db=$a; [ \"$f\" = -L ] && l=$a; done\n\
             [ \"$db\" = bad ] && { echo \"pg_restore: error: $db\" >&2; exit 1; }\n\
             cat \"$l\" > \"$db.restored\"; echo \"$PGPASSWORD\" >> \"$db.restored\"",
        );
        tool(
            bin.path(),
            "psql",
            "cat >/dev/null; printf 'table\\tpublic.t\\t1\\tx%s\\n' \"$PGPASSWORD\"",
        );
        for db in ["circle", "bad", "vms"] {
            std::fs::write(dir.path().join(format!("{db}.dump")), db).unwrap();
        }
        let m = "0123456789abcdef0123456789abcdef";
        let export = dir.path().to_str().unwrap();
        let (out, err) = jobs(
            bin.path(),
            IMPORT,
            &[
                "db.internal",
                "5432",
                "circle",
                export,
                "require",
                "\t",
                "SELECT stats",
                m,
            ],
            "pw1\ncircle\tcircle.dump\tkeep\nbad\tbad.dump\tkeep\nvms\tvms.dump\tclean\n",
        );
        let frames: Vec<&str> = out.split(&format!("\n{m}\t")).collect();
        assert_eq!(frames.len(), 4, "{out}");
        assert!(frames[1].starts_with("0\n"), "{out}");
        assert!(frames[2].starts_with("90\n"), "{out}");
        assert_eq!(frames[3], "0\n", "{out}");
        // Each dump's size too, and its restore list removed once restored (a failed
        // restore leaves it, part of the partial export): nothing left for a seal.
        for (job, size) in [(frames[0], 6), (frames[2].trim_start_matches("90\n"), 3)] {
            assert!(job.starts_with("sha256\t"), "{out}");
            assert!(job.contains(&format!("\nsize\t{size}\n")), "{out}");
            assert!(job.contains("\nrestore\t"), "{out}");
            assert!(job.ends_with("table\tpublic.t\t1\txpw1\n"), "{out}");
        }
        let lists: Vec<bool> = ["circle", "bad", "vms"]
            .iter()
            .map(|db| dir.path().join(format!("{db}.dump.list")).exists())
            .collect();
        assert_eq!(lists, [false, true, false]);
        assert_eq!(err.matches(&format!("\n{m}\n")).count(), 3, "{err}");
        assert!(err.contains("pg_restore: error: bad"), "{err}");
        for db in ["circle", "vms"] {
            let restored =
                std::fs::read_to_string(dir.path().join(format!("{db}.restored"))).unwrap();
            assert_eq!(restored, "2; 0 0 TABLE public t u\npw1\n", "{db}");
        }
    }

    #[test]
    fn the_readiness_probe_tries_again_within_one_exec() {
        // Up on the fourth try: one exec, well before the loop would give up, and the
        // databases listed by a fifth psql in the same exec.
        let (tries, out, took) = probe(3);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(tries, 5);
        let args = String::from_utf8_lossy(&out.stdout);
        let args: Vec<&str> = args.split_terminator('\n').collect();
        assert_eq!(
            args,
            [
                "-U",
                "postgres",
                "-X",
                "-q",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-F",
                "\t",
                "-d",
                "postgres",
                "-c",
                DATABASES_SQL
            ]
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn the_readiness_probe_gives_up_within_its_deadline_showing_the_last_refusal() {
        let (tries, out, took) = probe(u32::MAX);
        assert!(!out.status.success());
        // Tries 50 ms apart for one to two seconds, then the last one's words.
        assert!(tries >= 10, "{tries} tries");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim(),
            format!("psql: could not connect to server (try {tries})")
        );
        assert!(took >= Duration::from_secs(1), "{took:?}");
        assert!(took < super::super::container::MIN_PROBE, "{took:?}");
    }

    #[test]
    fn timestamps_are_hashed_by_value_only_when_the_probe_said_integers_on_every_line() {
        let out = |text: &str| CommandOutput {
            status: Some(0),
            stdout: text.as_bytes().to_vec(),
            stderr: Vec::new(),
            truncated: false,
        };
        let dbs = vec![("circle".to_string(), 7), ("postgres".to_string(), 5)];
        assert_eq!(
            databases_of(&out("circle\t7\ton\npostgres\t5\ton\n")),
            (dbs.clone(), true)
        );
        // A 9.x built with floating-point timestamps; a line without the setting
        // (an older probe's form); no database at all: text on both sides.
        assert_eq!(
            databases_of(&out("circle\t7\toff\npostgres\t5\toff\n")),
            (dbs, false)
        );
        assert_eq!(databases_of(&out("circle\t7\n")), (Vec::new(), false));
        assert_eq!(databases_of(&out("")), (Vec::new(), false));
    }

    fn line(t0: &str, t1: &str) -> Vec<String> {
        vec!["restore".into(), t0.into(), t1.into()]
    }

    #[test]
    fn the_restore_time_is_read_from_its_line_or_left_unknown() {
        assert_eq!(
            restore_time(&line("1733443200.250000", "1733443203.750000")),
            Some(Duration::from_millis(3500))
        );
        // A shell without EPOCHREALTIME, a clock set back, a locale's decimal comma.
        assert_eq!(restore_time(&line("-", "-")), None);
        assert_eq!(restore_time(&line("20.0", "10.0")), None);
        assert_eq!(restore_time(&line("1,5", "3,0")), None);
        assert_eq!(restore_time(&["restore".to_string()]), None);
    }
}
