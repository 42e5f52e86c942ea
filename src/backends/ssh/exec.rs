//! Commands on the Services machine, over the same SSH connection as the files: one
//! exec channel per command. Only the programs in [`Program`] can be run; every
//! argument is validated and single-quoted, so the remote shell never interprets
//! anything of the caller's. A secret goes on stdin, never on the command line (other
//! users of the machine can read process arguments). Each command has a deadline.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;

use super::{ServicesHost, SshError, EXEC_SESSIONS};

/// The most output kept of each stream by default; the rest is dropped, and
/// [`CommandOutput::truncated`] says so.
const MAX_OUTPUT: usize = 1024 * 1024;
/// The longest argument accepted.
const MAX_ARG: usize = 4096;

/// The programs the provider runs on the Services machine: nothing else can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// Replicated's CLI: the CircleCI app's status, stop and start.
    Replicatedctl,
    /// The Docker CLI: `ps`, `logs`, `exec` into CircleCI's containers.
    Docker,
    /// Debian's trust-store update after a CA certificate is added or removed.
    UpdateCaCertificates,
    /// systemd: restarts the Nomad agent on a Nomad client (`systemctl restart UNIT`).
    Systemctl,
    /// SysV init's wrapper: restarts the Nomad agent (`service NAME restart`).
    Service,
    /// coreutils' `du -s -B1`: the embedded data directories' size, at plan.
    Du,
    /// coreutils' `df -B1 --output=avail`: the export volume's free space, at plan.
    Df,
}

impl Program {
    /// Whether a run given up on may be sent SIGTERM. Not SysV's `service NAME
    /// restart` (the init script itself stops and starts the agent: cut off between the
    /// two, it would leave the agent stopped) nor `update-ca-certificates` (cut off, its
    /// links and hooks are half done); the others only read, or are clients whose
    /// daemon carries on (Docker, Replicated, systemd).
    fn interruptible(self) -> bool {
        !matches!(self, Program::Service | Program::UpdateCaCertificates)
    }

    /// The program's name on the Services machine.
    pub fn name(self) -> &'static str {
        match self {
            Program::Replicatedctl => "replicatedctl",
            Program::Docker => "docker",
            Program::UpdateCaCertificates => "update-ca-certificates",
            Program::Systemctl => "systemctl",
            Program::Service => "service",
            Program::Du => "du",
            Program::Df => "df",
        }
    }
}

/// One command: a program from the fixed set and its arguments.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteCommand {
    program: Program,
    args: Vec<String>,
    pub(super) max_output: usize,
}

impl fmt::Debug for RemoteCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

impl fmt::Display for RemoteCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// `s` in POSIX single quotes: the shell takes every byte literally.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl RemoteCommand {
    /// A command; refuses an argument with a NUL or a control character other than
    /// tab and newline, or longer than 4 KiB.
    pub fn new<I, S>(program: Program, args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        for a in &args {
            if a.len() > MAX_ARG {
                return Err(format!(
                    "an argument of {} is longer than {MAX_ARG} bytes",
                    program.name()
                ));
            }
            if a.chars().any(|c| c.is_control() && c != '\t' && c != '\n') {
                return Err(format!(
                    "an argument of {} holds a control character: {a:?}",
                    program.name()
                ));
            }
        }
        Ok(RemoteCommand {
            program,
            args,
            max_output: MAX_OUTPUT,
        })
    }

    /// The same command, keeping up to `bytes` of each output stream.
    pub fn keeping(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The program this command runs.
    pub fn program(&self) -> Program {
        self.program
    }

    /// The command line as the remote shell gets it (without sudo).
    pub fn line(&self) -> String {
        std::iter::once(self.program.name().to_string())
            .chain(self.args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What a command printed, and how it ended.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit status; `None` when the command was killed by a signal.
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// A stream printed more than the command keeps: its end is missing.
    pub truncated: bool,
}

impl fmt::Debug for CommandOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandOutput")
            .field("status", &self.status)
            .field("stdout", &format_args!("<{} bytes>", self.stdout.len()))
            .field("stderr", &format_args!("<{} bytes>", self.stderr.len()))
            .finish()
    }
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last lines of stderr (else stdout), for an error message, after the first
    /// error lines they leave out (a failed statement echoed over many lines, as
    /// `pg_restore` does, would push its `ERROR:` out of the tail).
    pub fn evidence(&self) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            String::from_utf8_lossy(&self.stderr)
        } else {
            String::from_utf8_lossy(&self.stdout)
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let (before, tail) = lines.split_at(lines.len().saturating_sub(5));
        let errors: Vec<&str> = before
            .iter()
            .filter(|l| {
                ["ERROR", "FATAL", "PANIC", "error:", "Error:"]
                    .iter()
                    .any(|m| l.contains(m))
            })
            .take(3)
            .copied()
            .collect();
        if errors.is_empty() {
            return tail.join("\n");
        }
        format!("{}\n…\n{}", errors.join("\n"), tail.join("\n"))
    }
}

/// How long a refused session open is retried: sshd frees a session only after the
/// loop that read its close, so an open sent right after a close (as the session
/// bound allows) can find all ten still taken. Longer than that race by far; a
/// MaxSessions below ten is refused for good after it.
const OPEN_RETRIES_FOR: Duration = Duration::from_secs(2);

/// A session channel, the open retried while sshd refuses it for at most
/// [`OPEN_RETRIES_FOR`] (see there).
pub(super) async fn open_session(
    handle: &russh::client::Handle<super::connect::Client>,
) -> Result<russh::Channel<russh::client::Msg>, russh::Error> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match handle.channel_open_session().await {
            Err(russh::Error::ChannelOpenFailure(why))
                if started.elapsed() + pause < OPEN_RETRIES_FOR =>
            {
                log::debug!("sshd refused a session ({why:?}); asking again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

/// Appends what fits of `data` under `max`; true when some of it did not.
pub(super) fn keep(buf: &mut Vec<u8>, data: &[u8], max: usize) -> bool {
    let room = max.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
    data.len() > room
}

/// A command started on a session of its own: its channel, with the connection and
/// the session it holds.
pub(super) struct Started {
    pub(super) conn: Arc<super::Session>,
    pub(super) session: tokio::sync::OwnedSemaphorePermit,
    pub(super) ch: russh::Channel<russh::client::Msg>,
}

/// The longest a command given up on may keep its session (see [`abandon`]).
const ABANDONED_FOR: Duration = Duration::from_secs(600);

/// Gives up on a started command (its deadline passed, or whoever waited for it went
/// away), from a task of its own: it is asked to stop when its program may be
/// ([`Program::interruptible`]; OpenSSH answers the protocol's signal request with
/// `killpg` on the command's process group, and ignores it where it cannot, as the
/// test sshd without privilege separation does), its input is closed, and its output is read and dropped until
/// sshd closes the channel. Its session stays taken until then: sshd lets a session go
/// only once its command has ended, closed channel or not, so a permit given back
/// earlier would have the next command refused. After [`ABANDONED_FOR`] the channel is
/// closed and the permit given back all the same.
pub(super) fn abandon(started: Started, cmd: &RemoteCommand) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (what, interrupt) = (cmd.line(), cmd.program.interruptible());
    let Started {
        conn,
        session,
        mut ch,
    } = started;
    rt.spawn(async move {
        let ended = tokio::time::timeout(ABANDONED_FOR, async {
            if interrupt {
                let _ = ch.signal(russh::Sig::TERM).await;
            }
            let _ = ch.eof().await;
            until_closed(&mut ch).await;
        })
        .await;
        if ended.is_err() {
            log::warn!(
                "`{what}`, given up on, still ran {} later: its channel is closed and its \
                 session counted free",
                humantime::format_duration(ABANDONED_FOR)
            );
        }
        let _ = ch.close().await;
        drop((session, conn));
    });
}

/// Reads and drops what the channel still brings until sshd's CLOSE (or the end of the
/// connection): only then has sshd let the session go.
pub(super) async fn until_closed(ch: &mut russh::Channel<russh::client::Msg>) {
    while let Some(msg) = ch.wait().await {
        if matches!(msg, ChannelMsg::Close) {
            break;
        }
    }
}

/// How long sshd gets to confirm the close of a session that runs no command.
const UNUSED_CLOSING: Duration = Duration::from_secs(10);

/// Closes a session that runs no command (its open came too late, or sshd refused the
/// command), from a task of its own: sshd frees such a session as soon as it has the
/// CLOSE, and the permit is given back once sshd's own CLOSE is here.
pub(super) fn close_unused(started: Started) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(close_unused_now(started));
}

async fn close_unused_now(started: Started) {
    let Started {
        conn,
        session,
        mut ch,
    } = started;
    let _ = tokio::time::timeout(UNUSED_CLOSING, async {
        let _ = ch.close().await;
        until_closed(&mut ch).await;
    })
    .await;
    drop((session, conn));
}

impl ServicesHost {
    /// The error of `cmd` at `step`.
    pub(super) fn command_failed(
        &self,
        cmd: &RemoteCommand,
        step: &str,
        source: Option<russh::Error>,
    ) -> SshError {
        SshError::Command {
            command: cmd.line(),
            target: self.cfg.target(),
            step: step.to_string(),
            source: source.map(|e| Box::new(e) as super::Cause),
        }
    }

    /// Starts `cmd` (through `sudo -n` when the configuration asks for it) on a session
    /// of its own and sends it `stdin`, its input left open; within `deadline`, a wait
    /// for a free session included. Also when the deadline began.
    pub(super) async fn start(
        &self,
        cmd: &RemoteCommand,
        stdin: Option<&[u8]>,
        deadline: Duration,
    ) -> Result<(Started, std::time::Instant), SshError> {
        let line = if self.cfg.sudo && self.cfg.user != "root" {
            format!("sudo -n -- {}", cmd.line())
        } else {
            cmd.line()
        };
        let fail =
            |step: &str, source: Option<russh::Error>| self.command_failed(cmd, step, source);
        let conn = self.session().await?;
        // Within the deadline: a command waiting for a session is still this command.
        let started = std::time::Instant::now();
        let permits = conn.commands.clone();
        let session = match tokio::time::timeout(deadline, permits.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return Err(fail("no session: the connection is closing", None)),
            Err(_) => {
                return Err(fail(
                    &format!(
                        "no free session within {}: {EXEC_SESSIONS} commands (some perhaps \
                         given up on and still running) held the connection's sessions for \
                         all that time",
                        humantime::format_duration(deadline)
                    ),
                    None,
                ))
            }
        };
        let no_result = || {
            fail(
                &format!("no result within {}", humantime::format_duration(deadline)),
                None,
            )
        };
        // The open runs in a task of its own: an open sshd confirms after the deadline
        // is still a session it counts, which that task then closes.
        let handle = conn.clone();
        let mut opening = tokio::spawn(async move { open_session(&handle.handle).await });
        let ch =
            match tokio::time::timeout(deadline.saturating_sub(started.elapsed()), &mut opening)
                .await
            {
                Ok(Ok(Ok(ch))) => ch,
                Ok(Ok(Err(e))) => return Err(fail("opening a session", Some(e))),
                Ok(Err(e)) => {
                    return Err(fail(
                        &format!("opening a session: the task ended: {e}"),
                        None,
                    ))
                }
                Err(_) => {
                    tokio::spawn(async move {
                        if let Ok(Ok(ch)) = opening.await {
                            close_unused_now(Started { conn, session, ch }).await;
                        }
                    });
                    return Err(no_result());
                }
            };
        // Refused at once: no command runs on the session.
        if let Err(e) = ch.exec(true, line.as_bytes()).await {
            close_unused(Started { conn, session, ch });
            return Err(fail("starting it", Some(e)));
        }
        let feed = async {
            if let Some(input) = stdin {
                ch.data(input)
                    .await
                    .map_err(|e| fail("sending its input", Some(e)))?;
            }
            Ok(())
        };
        let fed = tokio::time::timeout(deadline.saturating_sub(started.elapsed()), feed).await;
        let started_cmd = Started { conn, session, ch };
        match fed {
            Ok(Ok(())) => Ok((started_cmd, started)),
            Ok(Err(e)) => {
                abandon(started_cmd, cmd);
                Err(e)
            }
            Err(_) => {
                abandon(started_cmd, cmd);
                Err(no_result())
            }
        }
    }

    /// Runs `cmd` (through `sudo -n` when the configuration asks for it), feeding it
    /// `stdin`, within `deadline`. A non-zero exit is returned, not an error: the
    /// caller knows what it means.
    pub async fn run(
        &self,
        cmd: &RemoteCommand,
        stdin: Option<&[u8]>,
        deadline: Duration,
    ) -> Result<CommandOutput, SshError> {
        let fail =
            |step: &str, source: Option<russh::Error>| self.command_failed(cmd, step, source);
        // The connection and the session stay held until the command has ended.
        let (
            Started {
                conn,
                session,
                mut ch,
            },
            started,
        ) = self.start(cmd, stdin, deadline).await?;
        // Err(None): sshd refused the command.
        let work = async {
            ch.eof()
                .await
                .map_err(|e| Some(fail("closing its input", Some(e))))?;
            let mut out = CommandOutput {
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
                truncated: false,
            };
            let max = cmd.max_output;
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.truncated |= keep(&mut out.stdout, &data, max),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        out.truncated |= keep(&mut out.stderr, &data, max)
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::Failure => return Err(None),
                    _ => {}
                }
            }
            Ok(out)
        };
        let done = tokio::time::timeout(deadline.saturating_sub(started.elapsed()), work).await;
        match done {
            Ok(Ok(r)) => {
                log::debug!(
                    "{}: `{}` exited with {:?}",
                    self.cfg.target(),
                    cmd.line(),
                    r.status
                );
                Ok(r)
            }
            // The connection is gone: so is the session.
            Ok(Err(Some(e))) => Err(e),
            Ok(Err(None)) => {
                close_unused(Started { conn, session, ch });
                Err(fail("the Services machine refused to run it", None))
            }
            Err(_) => {
                abandon(Started { conn, session, ch }, cmd);
                Err(fail(
                    &format!("no result within {}", humantime::format_duration(deadline)),
                    None,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_keeps_an_error_line_the_tail_leaves_out() {
        let out = |stderr: &str| CommandOutput {
            status: Some(1),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
            truncated: false,
        };
        let restore = "pg_restore: error while PROCESSING TOC:\n\
            pg_restore: ERROR:  cannot execute CREATE TABLE in a read-only transaction\n\
            Command was: CREATE TABLE public.t (\n    a text,\n    b text,\n    c text,\n    d bytea\n);\n";
        let e = out(restore).evidence();
        assert!(e.contains("read-only transaction"), "{e}");
        assert!(e.ends_with("    d bytea\n);"), "{e}");
        // Short output, or no error line outside the tail: the tail alone.
        assert_eq!(out("a\n\nb\n").evidence(), "a\nb");
        assert_eq!(out("1\n2\n3\n4\n5\n6\n").evidence(), "2\n3\n4\n5\n6");
    }

    #[test]
    fn arguments_are_quoted_and_checked() {
        let c = RemoteCommand::new(
            Program::Docker,
            ["logs", "front end", "it's; rm -rf / $(x) `y`"],
        )
        .unwrap();
        assert_eq!(
            c.line(),
            "docker 'logs' 'front end' 'it'\\''s; rm -rf / $(x) `y`'"
        );
        assert!(RemoteCommand::new(Program::Docker, ["a\0b"]).is_err());
        assert!(RemoteCommand::new(Program::Docker, ["a\x1bb"]).is_err());
        assert!(RemoteCommand::new(Program::Docker, ["x".repeat(5000)]).is_err());
        assert!(RemoteCommand::new(Program::Docker, ["two\nlines\tand tab"]).is_ok());
    }

    #[test]
    fn evidence_is_the_last_lines_of_stderr_else_stdout() {
        let o = CommandOutput {
            status: Some(1),
            stdout: b"a\nb\n".to_vec(),
            stderr: b"\n".to_vec(),
            truncated: false,
        };
        assert_eq!(o.evidence(), "a\nb");
        let o = CommandOutput {
            status: Some(1),
            stdout: b"a\n".to_vec(),
            stderr: (1..=8)
                .map(|i| format!("e{i}\n"))
                .collect::<String>()
                .into_bytes(),
            truncated: false,
        };
        assert_eq!(o.evidence(), "e4\ne5\ne6\ne7\ne8");
    }
}
