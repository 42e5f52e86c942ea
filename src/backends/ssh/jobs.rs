//! One command that runs several jobs, one after another, over one exec channel
//! (issue 28): a `docker exec` into a temporary container costs a program start on the
//! Services machine (the Docker CLI, the daemon's exec, the container's shell: 50 to
//! 150 ms on a real Docker) and a session on the connection. The migration's workers
//! send each database's job as one line on the command's stdin; the command (a fixed
//! loop script, see `data_migration::embedded_postgres`) runs it with its stdin at
//! `/dev/null` and ends it by a frame on each stream: `\nMARK\tSTATUS\n` on stdout,
//! `\nMARK\n` on stderr. `MARK` is random per command, so no job's output ends a
//! job early. A job's line is data (the loop splits it into words), never shell text.
//!
//! Each job has its own deadline. After one that did not end within it, or a command
//! that ended before its job did, no other job is sent and the command is given up on
//! as a one-shot command past its deadline is (`exec::abandon`: asked to stop, its
//! input closed, its session counted taken until sshd lets it go).

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;

use super::exec::{
    abandon, close_unused, keep, until_closed, CommandOutput, RemoteCommand, Started,
};
use super::{ServicesHost, Session, SshError};

/// What a job's error says when sshd refused to run the command.
const REFUSED: &str = "the Services machine refused to run it";

/// A command taking jobs: see the module's documentation.
pub struct Jobs<'a> {
    host: &'a ServicesHost,
    cmd: RemoteCommand,
    mark: String,
    ch: Option<russh::Channel<russh::client::Msg>>,
    conn: Arc<Session>,
    /// One of the connection's sessions, for as long as the command runs (taken with
    /// the channel when the command is given up on).
    session: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A fresh mark for a command's frames: 32 random hex digits.
pub fn new_mark() -> String {
    let mut b = [0u8; 16];
    // The system's random source; should it fail, the time and the process still
    // make a mark no job prints.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        b = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        for (x, p) in b[12..].iter_mut().zip(std::process::id().to_le_bytes()) {
            *x ^= p;
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One stream of one job: what it printed (up to `max`), and how it ends.
struct Framed {
    kept: Vec<u8>,
    /// The last bytes of the stream, where the frame shows.
    tail: Vec<u8>,
    total: usize,
    max: usize,
}

impl Framed {
    fn new(max: usize) -> Framed {
        Framed {
            kept: Vec::new(),
            tail: Vec::new(),
            total: 0,
            max,
        }
    }

    /// Room for the frame after what is kept, so that it can be cut off at the end.
    const FRAME: usize = 64;

    fn push(&mut self, data: &[u8]) {
        keep(&mut self.kept, data, self.max + Self::FRAME);
        self.total += data.len();
        self.tail.extend_from_slice(data);
        let over = self.tail.len().saturating_sub(Self::FRAME);
        self.tail.drain(..over);
    }

    /// The frame's length and, on stdout, the job's status, once the stream ends with
    /// `\nMARK\tSTATUS\n` (`status`) or `\nMARK\n`.
    fn ended(&self, mark: &str, status: bool) -> Option<(usize, Option<u32>)> {
        let t = self.tail.strip_suffix(b"\n")?;
        let head = format!("\n{mark}");
        if !status {
            return t
                .ends_with(head.as_bytes())
                .then_some((head.len() + 1, None));
        }
        let tab = t.iter().rposition(|b| *b == b'\t')?;
        let digits = &t[tab + 1..];
        if !t[..tab].ends_with(head.as_bytes()) || digits.is_empty() || digits.len() > 3 {
            return None;
        }
        let s: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        Some((head.len() + 1 + digits.len() + 1, Some(s)))
    }

    /// What the job printed, without the frame (`frame` bytes); whether it printed
    /// more than is kept.
    fn output(mut self, frame: usize) -> (Vec<u8>, bool) {
        let len = self.total - frame;
        self.kept.truncate(len.min(self.max));
        (self.kept, len > self.max)
    }
}

impl ServicesHost {
    /// Starts `cmd`, which frames each job with `mark` (see the module's
    /// documentation), feeding it `stdin` first (a secret it reads before its first
    /// job); within `deadline`. Its jobs are sent by [`Jobs::job`].
    pub async fn jobs(
        &self,
        cmd: &RemoteCommand,
        mark: &str,
        stdin: Option<&[u8]>,
        deadline: Duration,
    ) -> Result<Jobs<'_>, SshError> {
        let (Started { conn, session, ch }, _) = self.start(cmd, stdin, deadline).await?;
        Ok(Jobs {
            host: self,
            cmd: cmd.clone(),
            mark: mark.to_string(),
            ch: Some(ch),
            conn,
            session: Some(session),
        })
    }
}

impl Jobs<'_> {
    /// The command, as messages show it.
    pub fn command(&self) -> &RemoteCommand {
        &self.cmd
    }

    /// Whether the command still takes jobs: not after a job that failed to end (see
    /// the module's documentation), nor once its connection has closed (the next
    /// command reconnects).
    pub fn open(&self) -> bool {
        self.ch.is_some() && !self.conn.handle.is_closed()
    }

    fn fail(&self, step: &str) -> SshError {
        self.host.command_failed(&self.cmd, step, None)
    }

    /// Sends `words` as one job (tab-separated on one line: no word may be empty or
    /// hold a tab or a line break) and returns what it printed and its status, within
    /// `deadline`. A non-zero status is returned, not an error, as
    /// [`ServicesHost::run`] does. A command that ended before its job did is an error
    /// (with what it printed), and takes no other job.
    pub async fn job(
        &mut self,
        words: &[&str],
        deadline: Duration,
    ) -> Result<CommandOutput, SshError> {
        if let Some(w) = words
            .iter()
            .find(|w| w.is_empty() || w.contains(['\t', '\n', '\r']))
        {
            return Err(self.fail(&format!(
                "a job's word is empty or holds a tab or a line break: {w:?}"
            )));
        }
        let Some(ch) = self.ch.as_mut() else {
            return Err(self.fail("a job after the command had ended"));
        };
        let (mark, max) = (self.mark.as_str(), self.cmd.max_output);
        let line = format!("{}\n", words.join("\t"));
        let work = async {
            ch.data(line.as_bytes())
                .await
                .map_err(|_| "sending the job".to_string())?;
            let (mut out, mut err) = (Framed::new(max), Framed::new(max));
            let (mut status, mut err_frame) = (None, None);
            let mut exit = None;
            while status.is_none() || err_frame.is_none() {
                match ch.wait().await {
                    // A frame once seen stays (the mark is random: nothing after it is
                    // the job's); output after it would be the next job's, and there is
                    // none before the next line.
                    Some(ChannelMsg::Data { data }) if status.is_none() => {
                        out.push(&data);
                        status = out.ended(mark, true);
                    }
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) if err_frame.is_none() => {
                        err.push(&data);
                        err_frame = err.ended(mark, false).map(|(n, _)| n);
                    }
                    Some(ChannelMsg::ExitStatus { exit_status }) => exit = Some(exit_status),
                    // No more output; its exit status may follow.
                    Some(ChannelMsg::Eof) => {}
                    Some(ChannelMsg::Close) | None => {
                        // The command ended before the job did: what it printed is the
                        // evidence.
                        let (stdout, _) = out.output(0);
                        let (stderr, _) = err.output(0);
                        let seen = CommandOutput {
                            status: exit,
                            stdout,
                            stderr,
                            truncated: false,
                        };
                        let status =
                            exit.map_or("no exit status".into(), |s| format!("status {s}"));
                        return Err(match seen.evidence() {
                            e if e.is_empty() => format!("it ended ({status}) before its job did"),
                            e => format!("it ended ({status}) before its job did:\n{e}"),
                        });
                    }
                    Some(ChannelMsg::Failure) => return Err(REFUSED.into()),
                    _ => {}
                }
            }
            let (Some((n, code)), Some(e)) = (status, err_frame) else {
                return Err("reading the job's end".to_string());
            };
            let (stdout, t1) = out.output(n);
            let (stderr, t2) = err.output(e);
            Ok(CommandOutput {
                status: code,
                stdout,
                stderr,
                truncated: t1 || t2,
            })
        };
        let step = match tokio::time::timeout(deadline, work).await {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(step)) => step,
            Err(_) => format!(
                "no result of the job within {}",
                humantime::format_duration(deadline)
            ),
        };
        // Not used again: given up on as a one-shot command would be; a command sshd
        // refused runs nothing, and its session is closed at once.
        if step == REFUSED {
            if let Some(started) = self.take_started() {
                close_unused(started);
            }
        } else {
            self.abandon();
        }
        Err(self.fail(&step))
    }

    /// Ends the command: its input closed, it ends once its last job has and sshd has
    /// closed its channel (within `deadline`; a command that does not is given up on, as
    /// one whose job missed its deadline is).
    pub async fn close(mut self, deadline: Duration) {
        let Some(ch) = self.ch.as_mut() else {
            return;
        };
        // Until sshd's CLOSE: only then has it let the session go.
        let ended = tokio::time::timeout(deadline, async {
            let eof = ch.eof().await.is_ok();
            if eof {
                until_closed(ch).await;
            }
            eof
        })
        .await;
        match (ended, self.ch.take()) {
            (Ok(true), Some(ch)) => {
                let _ = ch.close().await;
            }
            (_, ch) => {
                self.ch = ch;
                self.abandon();
            }
        }
    }

    /// Gives the command up (see `exec::abandon`): its session is counted taken until
    /// sshd has let it go.
    fn abandon(&mut self) {
        if let Some(started) = self.take_started() {
            abandon(started, &self.cmd);
        }
    }

    /// The channel and its session, taken out to be given up on or closed.
    fn take_started(&mut self) -> Option<Started> {
        match (self.ch.take(), self.session.take()) {
            (Some(ch), Some(session)) => Some(Started {
                conn: self.conn.clone(),
                session,
                ch,
            }),
            _ => None,
        }
    }
}

impl Drop for Jobs<'_> {
    /// Not closed by [`Jobs::close`] (a failure on the way, a cancelled apply): given
    /// up on, as a command whose job missed its deadline is.
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(chunks: &[&[u8]], max: usize) -> Framed {
        let mut f = Framed::new(max);
        for c in chunks {
            f.push(c);
        }
        f
    }

    #[test]
    fn a_frame_ends_a_job_in_any_chunks() {
        let m = "0123456789abcdef0123456789abcdef";
        let whole = format!("a\tb\nc\n{m}\t91\n");
        // Split at every byte: the frame is seen only once complete.
        for at in 0..whole.len() {
            let (x, y) = whole.as_bytes().split_at(at);
            let f = framed(&[x], 100);
            assert_eq!(f.ended(m, true), None, "{at}");
            let f = framed(&[x, y], 100);
            let (n, s) = f.ended(m, true).unwrap();
            assert_eq!(s, Some(91));
            assert_eq!(f.output(n), (b"a\tb\nc".to_vec(), false));
        }
        // Output without a last line break keeps its last line whole.
        let f = framed(&[format!("x\n{m}\t0\n").as_bytes()], 100);
        let (n, s) = f.ended(m, true).unwrap();
        assert_eq!((f.output(n), s), ((b"x".to_vec(), false), Some(0)));
        // Nothing printed.
        let f = framed(&[format!("\n{m}\t0\n").as_bytes()], 100);
        let (n, _) = f.ended(m, true).unwrap();
        assert_eq!(f.output(n), (Vec::new(), false));
        // stderr's frame has no status.
        let f = framed(&[format!("oops\n\n{m}\n").as_bytes()], 100);
        let (n, s) = f.ended(m, false).unwrap();
        assert_eq!((f.output(n), s), ((b"oops\n".to_vec(), false), None));
    }

    #[test]
    fn a_frame_is_only_the_mark_at_the_end() {
        let m = "0123456789abcdef0123456789abcdef";
        for s in [
            format!("{m}\t0\n"),           // no line break before it
            format!("\nx{m}\t0\n"),        // not at a line's start
            format!("\n{m}\t0\nmore\n"),   // output after it
            format!("\n{m}\tx\n"),         // no status
            format!("\n{m}\t1234\n"),      // not an exit status
            format!("\n{}\t0\n", &m[1..]), // another mark
            format!("\n{m}\t0"),           // not a whole line yet
        ] {
            assert_eq!(framed(&[s.as_bytes()], 100).ended(m, true), None, "{s:?}");
        }
        assert_eq!(
            framed(&[format!("\n{m}\t0\n").as_bytes()], 100).ended(m, false),
            None
        );
    }

    #[test]
    fn a_long_output_is_cut_and_says_so() {
        let m = "0123456789abcdef0123456789abcdef";
        let f = framed(&[&[b'x'; 300], format!("\n{m}\t0\n").as_bytes()], 100);
        let (n, _) = f.ended(m, true).unwrap();
        assert_eq!(f.output(n), (vec![b'x'; 100], true));
        // Exactly the most kept: whole.
        let f = framed(&[&[b'x'; 100], format!("\n{m}\t0\n").as_bytes()], 100);
        let (n, _) = f.ended(m, true).unwrap();
        assert_eq!(f.output(n), (vec![b'x'; 100], false));
    }

    #[test]
    fn marks_differ() {
        let (a, b) = (new_mark(), new_mark());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
