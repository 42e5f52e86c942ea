//! A temporary container on the Services machine over the embedded data, as CircleCI's
//! export script starts them: `docker run` of the embedded image with the data and the
//! export directory mounted, fixed `docker exec` command lines while it runs, and
//! `docker rm -f` at the end. The export directory is sealed (0700, files 0600, a
//! SHA-256 each) from inside it, as root in the container.

use std::time::Duration;

use std::future::Future;

use crate::backends::ssh::{new_mark, CommandOutput, Jobs, Program, RemoteCommand, ServicesHost};
use crate::plugin::{Diagnostic, Diagnostics};
use crate::resources::{run_command, ssh_diag};

/// Where the export directory is mounted in the temporary containers.
pub const EXPORT_MOUNT: &str = "/export";

/// Seals the export: the directory 0700; each entry named after `$2` (a file, or a
/// directory with everything under it) 0600 for files and 0700 for directories, its
/// restore list (`ENTRY.list`) removed; then `path<TAB>size<TAB>sha256` per file, the
/// digest read only when `$2` is `hash` (else `-`: the import read it already).
const SEAL: &str = "cd \"$1\" && chmod 0700 . && H=$2 && shift 2 && for a in \"$@\"; do rm -f \"$a.list\" || exit 1; done \
     && find \"$@\" -type d -exec chmod 0700 {} + && find \"$@\" -type f | LC_ALL=C sort | \
     while IFS= read -r f; do chmod 0600 \"$f\" && s=- && \
     { [ \"$H\" != hash ] || s=$(sha256sum \"$f\" | cut -d ' ' -f 1); } && \
     printf '%s\\t%s\\t%s\\n' \"$f\" \"$(stat -c %s \"$f\")\" \"$s\" || exit 1; done";

/// Makes the export directory private before anything is written into it: Docker
/// creates a missing mount point 0755, and the dumps are written under umask 022.
const PRIVATE: &str = "chmod 0700 \"$1\"";

/// Runs its arguments (a fixed program and its arguments, never a shell's words)
/// under umask 077, so that what it writes into the export is private from the start.
pub(super) const PRIVATE_EXEC: &str = "umask 077 && exec \"$@\"";

/// The least time one readiness probe is given, however little of `ready_within` is left.
pub(super) const MIN_PROBE: Duration = Duration::from_secs(5);

/// Removes the entries named in the arguments from the export directory.
const REMOVE: &str = "cd \"$1\" && shift && rm -rf -- \"$@\"";

/// One exported file, as sealed on the Services machine (its path under the export
/// directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    /// Its name under the export directory.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// A running temporary container.
pub struct Container<'a> {
    pub(super) h: &'a ServicesHost,
    pub name: String,
    pub deadline: Duration,
    /// The export directory is mounted: made private while the server starts, before
    /// anything is written into it.
    exports: bool,
}

/// Commands in a temporary container that take one job after another (issue 28): a
/// worker's next database goes to a command already running instead of a `docker
/// exec` of its own (a program start on the Services machine, a session on the
/// connection). Between jobs at most `keep` wait idle, each holding a session of the
/// connection for as long; a job that finds none idle for its key (`K`: what the
/// command was started with, such as the target it logs in to) starts one. A command
/// that failed to end a job is not used again.
pub(super) struct JobPool<'a, K> {
    idle: std::sync::Mutex<Vec<(K, Jobs<'a>)>>,
    keep: usize,
}

impl<'a, K: PartialEq> JobPool<'a, K> {
    pub(super) fn new(keep: usize) -> JobPool<'a, K> {
        JobPool {
            idle: std::sync::Mutex::new(Vec::new()),
            keep,
        }
    }

    pub(super) fn keep(&mut self, keep: usize) {
        self.keep = keep;
    }

    /// Runs the job `words` (within `deadline`) on an idle command started for `key`,
    /// else on one `start` starts; the command line and what the job printed.
    pub(super) async fn run<F, Fut>(
        &self,
        key: K,
        words: &[&str],
        deadline: Duration,
        start: F,
    ) -> Result<(RemoteCommand, CommandOutput), Diagnostics>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Jobs<'a>, Diagnostics>>,
    {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            // One whose connection closed while it waited is dropped.
            idle.retain(|(_, j)| j.open());
            idle.iter()
                .position(|(k, _)| *k == key)
                .map(|i| idle.swap_remove(i).1)
        };
        let mut jobs = match idle {
            Some(j) => j,
            None => start().await?,
        };
        let out = jobs.job(words, deadline).await;
        let cmd = jobs.command().clone();
        // Kept for the next job, or ended now, as a one-shot command ends (one that
        // failed to end its job was given up on in `job`).
        if jobs.open() {
            if let Some(spare) = self.park(key, jobs) {
                spare.close(deadline).await;
            }
        }
        let out = out.map_err(|e| ssh_diag(&format!("Could not run `{cmd}`"), e))?;
        Ok((cmd, out))
    }

    /// Keeps `jobs` idle for `key`, or hands it back when `keep` are already idle.
    fn park(&self, key: K, jobs: Jobs<'a>) -> Option<Jobs<'a>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= self.keep {
            return Some(jobs);
        }
        idle.push((key, jobs));
        None
    }

    /// Ends every idle command, at once (within `deadline` each).
    pub(super) async fn close(&self, deadline: Duration) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        futures_util::future::join_all(idle.into_iter().map(|(_, j)| j.close(deadline))).await;
    }
}

/// The error of a command that failed: the command (no secret is ever on one) and
/// what it printed.
pub(crate) fn fail(summary: &str, cmd: &RemoteCommand, out: &CommandOutput) -> Diagnostics {
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

/// Lines of tab-separated fields.
pub(super) fn rows_of(out: &CommandOutput) -> Vec<Vec<String>> {
    out.stdout_text()
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

async fn docker(
    h: &ServicesHost,
    args: &[&str],
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Result<(RemoteCommand, CommandOutput), Diagnostics> {
    run_command(h, Program::Docker, args, stdin, deadline).await
}

impl<'a> Container<'a> {
    /// Starts container `name` of `image` detached with `mounts` (`host:inside[:ro]`),
    /// running `cmd` (none: the image's own server). When `docker run` refuses, a
    /// container of that name (left by an interrupted run: the name is taken) is
    /// removed and the run tried once more; that second answer is the one reported.
    /// `what` names the server in the error.
    pub async fn run(
        h: &'a ServicesHost,
        (name, image, cmd): (&str, &str, &[&str]),
        mounts: &[String],
        deadline: Duration,
        what: &str,
    ) -> Result<Container<'a>, Diagnostics> {
        let mut args = vec!["run", "--name", name, "-d"];
        for m in mounts {
            args.push("-v");
            args.push(m);
        }
        args.push(image);
        args.extend_from_slice(cmd);
        // The usual case: no such container, so no `docker rm` before the run (the
        // cutover's downtime waits for each command).
        let (mut cmd, mut out) = docker(h, &args, None, deadline).await?;
        if !out.success() {
            // Best effort: "no such container" is an answer too.
            let _ = docker(h, &["rm", "-f", name], None, deadline).await;
            (cmd, out) = docker(h, &args, None, deadline).await?;
        }
        if !out.success() {
            return Err(fail(&format!("Could not start {what}"), &cmd, &out));
        }
        Ok(Container {
            h,
            name: name.to_string(),
            deadline,
            exports: mounts
                .iter()
                .any(|m| m.split(':').nth(1) == Some(EXPORT_MOUNT)),
        })
    }

    /// Probes with `docker EXEC_ARGS` every 250 ms until it succeeds; past
    /// `ready_within` the container is removed and the error names `what` (the server)
    /// and `image`.
    pub async fn wait_ready(
        self,
        probe: &[&str],
        ready_within: Duration,
        what: &str,
        image: &str,
    ) -> Result<Container<'a>, Diagnostics> {
        Ok(self.wait_answer(probe, ready_within, what, image).await?.0)
    }

    /// [`Container::wait_ready`], with what the probe that succeeded printed. The
    /// export directory is made private (when it is mounted) while the server starts:
    /// the container runs once `docker run` returns, and nothing is written into the
    /// export before both are done.
    pub async fn wait_answer(
        self,
        probe: &[&str],
        ready_within: Duration,
        what: &str,
        image: &str,
    ) -> Result<(Container<'a>, CommandOutput), Diagnostics> {
        let private = async {
            if !self.exports {
                return Ok(());
            }
            self.in_export(PRIVATE, &[], "Could not make the export directory private")
                .await
                .map(|_| ())
        };
        let d = match tokio::join!(private, self.probe(probe, ready_within, what, image)) {
            (Ok(()), Ok(out)) => return Ok((self, out)),
            // A container that did not start fails the chmod too: the probe says why.
            (_, Err(d)) | (Err(d), Ok(_)) => d,
        };
        self.stop().await;
        Err(d)
    }

    /// Probes with `docker EXEC_ARGS` every 250 ms until it succeeds (what it
    /// printed then), or until `ready_within` has passed.
    async fn probe(
        &self,
        probe: &[&str],
        ready_within: Duration,
        what: &str,
        image: &str,
    ) -> Result<CommandOutput, Diagnostics> {
        let started = std::time::Instant::now();
        loop {
            // Each probe may take what is left of `ready_within` (a slow daemon right
            // after CircleCI's stop is not a failure), never the command deadline of
            // hours; a probe that fails to run (an SSH drop, no answer in time) fails
            // the wait (and the container is removed).
            let left = ready_within
                .saturating_sub(started.elapsed())
                .max(MIN_PROBE)
                .min(self.deadline);
            let (_, out) = docker(self.h, probe, None, left).await?;
            if out.success() {
                log::info!("{what} answers in container {}", self.name);
                return Ok(out);
            }
            if started.elapsed() >= ready_within {
                return Err(Diagnostic::error(
                    format!("{} did not start", crate::resources::capitalized(what)),
                    format!(
                        "container {} ({image}) did not answer within {}:\n{}",
                        self.name,
                        humantime::format_duration(ready_within),
                        out.evidence()
                    ),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `docker ARGS` on the Services machine, within the deadline.
    pub async fn docker(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<(RemoteCommand, CommandOutput), Diagnostics> {
        docker(self.h, args, stdin, self.deadline).await
    }

    /// Starts `docker exec -i NAME bash -c SCRIPT jobs ARGS... MARK`, feeding it `stdin`
    /// first: a command that takes jobs on its standard input (see [`JobPool`]: `-i`
    /// always, or Docker does not attach it), its frames' mark a fresh one, its last
    /// argument.
    pub(super) async fn start_jobs(
        &self,
        script: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Jobs<'a>, Diagnostics> {
        let mark = new_mark();
        let mut all = vec![
            "exec",
            "-i",
            self.name.as_str(),
            "bash",
            "-c",
            script,
            "jobs",
        ];
        all.extend_from_slice(args);
        all.push(&mark);
        let cmd = RemoteCommand::new(Program::Docker, all)
            .map_err(|e| Diagnostics::from(Diagnostic::error("Invalid command", e)))?;
        self.h
            .jobs(&cmd, &mark, stdin, self.deadline)
            .await
            .map_err(|e| ssh_diag(&format!("Could not run `{cmd}`"), e))
    }

    /// `docker exec [-i] NAME ARGS` (with `-i` when there is standard input); a failure
    /// is an error under `summary`.
    pub async fn exec(
        &self,
        args: &[&str],
        stdin: Option<&[u8]>,
        summary: &str,
    ) -> Result<(RemoteCommand, CommandOutput), Diagnostics> {
        let mut all = vec!["exec"];
        if stdin.is_some() {
            all.push("-i");
        }
        all.push(&self.name);
        all.extend_from_slice(args);
        let (cmd, out) = self.docker(&all, stdin).await?;
        if !out.success() {
            return Err(fail(summary, &cmd, &out));
        }
        Ok((cmd, out))
    }

    /// Runs `script` in the export directory (its `$1`) on `entries`.
    async fn in_export(
        &self,
        script: &str,
        entries: &[String],
        summary: &str,
    ) -> Result<(RemoteCommand, CommandOutput), Diagnostics> {
        let mut args = vec!["bash", "-c", script, "export", EXPORT_MOUNT];
        args.extend(entries.iter().map(String::as_str));
        self.exec(&args, None, summary).await
    }

    /// Makes the export directory 0700 and `entries` in it (files, or directories and
    /// all under them) 0600; every file's path, size and SHA-256.
    pub async fn seal(&self, entries: &[String]) -> Result<Vec<ExportFile>, Diagnostics> {
        self.seal_as(entries, "hash").await
    }

    /// [`Container::seal`] of `files`, whose SHA-256 is known when not empty and size
    /// when not 0 (the import read them), read here otherwise. A file whose both are
    /// known needs no seal: the export directory was made private before anything was
    /// written into it, the dump was written as a new file under umask 077, and the
    /// import removed its restore list. With every file so, no command runs.
    pub async fn seal_known(&self, files: &[ExportFile]) -> Result<Vec<ExportFile>, Diagnostics> {
        let (done, rest): (Vec<&ExportFile>, Vec<&ExportFile>) = files
            .iter()
            .partition(|f| !f.sha256.is_empty() && f.size > 0);
        let (known, unknown): (Vec<&ExportFile>, Vec<&ExportFile>) =
            rest.into_iter().partition(|f| !f.sha256.is_empty());
        let names = |fs: &[&ExportFile]| fs.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        let mut out: Vec<ExportFile> = done.into_iter().cloned().collect();
        if !known.is_empty() {
            for mut f in self.seal_as(&names(&known), "sizes").await? {
                let Some(k) = known.iter().find(|k| k.name == f.name) else {
                    return Err(Diagnostic::error(
                        "Could not seal the export",
                        format!("{} is not one of the files the import read", f.name),
                    )
                    .into());
                };
                f.sha256 = k.sha256.clone();
                out.push(f);
            }
        }
        if !unknown.is_empty() {
            out.extend(self.seal_as(&names(&unknown), "hash").await?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn seal_as(
        &self,
        entries: &[String],
        hash: &str,
    ) -> Result<Vec<ExportFile>, Diagnostics> {
        let mut args = vec![hash.to_string()];
        args.extend_from_slice(entries);
        let (cmd, out) = self
            .in_export(SEAL, &args, "Could not seal the export")
            .await?;
        let mut sealed = Vec::new();
        for r in rows_of(&out) {
            if let [name, size, sha] = r.as_slice() {
                sealed.push(ExportFile {
                    name: name.clone(),
                    size: size.parse().unwrap_or(0),
                    sha256: sha.clone(),
                });
            }
        }
        let missing: Vec<&String> = entries
            .iter()
            .filter(|e| {
                !sealed
                    .iter()
                    .any(|f| &f.name == *e || f.name.starts_with(&format!("{e}/")))
            })
            .collect();
        if !missing.is_empty() {
            return Err(Diagnostic::error(
                "Could not seal the export",
                format!(
                    "`{cmd}` listed no file of {}:\n{}",
                    missing
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    out.evidence()
                ),
            )
            .into());
        }
        Ok(sealed)
    }

    /// Deletes `entries` (files or directories) from the export directory.
    pub async fn remove(&self, entries: &[String]) -> Result<(), Diagnostics> {
        self.in_export(REMOVE, entries, "Could not remove the export")
            .await
            .map(|_| ())
    }

    /// After a failure: the partial export (`entries`) removed when it is not to be
    /// kept, or else said to stay, private (written under umask 077 into a 0700
    /// directory). A removal that fails is added to `d`, never hidden.
    pub async fn after_failure(
        &self,
        entries: &[String],
        keep: bool,
        export_dir: &str,
        what: &str,
        d: &mut Diagnostics,
    ) {
        d.push(if !keep {
            match self.remove(entries).await {
                Ok(()) => Diagnostic::warning(
                    format!("Partial {what} export removed"),
                    format!(
                        "Anything this failed migration exported was removed from {export_dir} \
                         (keep_export = false)."
                    ),
                ),
                Err(e) => Diagnostic::error(
                    format!("Partial {what} export not removed"),
                    format!(
                        "{e} The partial export in {export_dir} is private (directory 0700, files 0600); \
                         remove it by hand, or let the next apply write it again."
                    ),
                ),
            }
        } else {
            Diagnostic::warning(
                format!("Partial {what} export kept"),
                format!(
                    "Anything this failed migration exported stays in {export_dir} on the Services machine, \
                     private (directory 0700, files 0600); the next apply writes it again."
                ),
            )
        });
    }

    /// Removes the container (its server stops; the data directory stays as it was);
    /// whether `docker rm -f` said it did. A `docker rm` that fails is logged; the
    /// migration's parts then have its containers listed again at its end
    /// (`cutover::remove_migration_containers`), and the restart lists them before it
    /// starts CircleCI in any case.
    pub async fn stop(self) -> bool {
        match self.docker(&["rm", "-f", &self.name], None).await {
            Err(d) => log::warn!("removing container {}: {d}", self.name),
            Ok((cmd, out)) if !out.success() => {
                log::warn!(
                    "removing container {}: `{cmd}` failed: {}",
                    self.name,
                    out.evidence()
                )
            }
            Ok(_) => return true,
        }
        false
    }
}
