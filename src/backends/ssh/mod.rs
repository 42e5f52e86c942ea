//! The CircleCI Services machine over SSH: read, write (atomically) and delete files.
//!
//! One SSH connection per host per provider process, opened on first use and shared by
//! every concurrent caller; all file work goes over one SFTP channel on it (SFTP
//! multiplexes requests), so Terraform's ten parallel operations never hit sshd's
//! MaxSessions. No shell command is ever built from user input: files are handled with
//! SFTP requests. With `sudo`, the SFTP server itself is started through `sudo -n`
//! (a fixed command line), so the same requests run as root.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::sync::Mutex;

use crate::backends::tunnel::{self, DialError};
use crate::secret::Secret;

mod connect;
mod exec;
mod jobs;
mod quick_ack;
pub use connect::parse_host_key;
use connect::Client;
pub(crate) use exec::CommandOutput;
pub use exec::{Program, RemoteCommand};
pub use jobs::{new_mark, Jobs};

/// The fixed command used to run the SFTP server as root. Debian/Ubuntu and RHEL keep
/// sftp-server in different places; no user input goes into this line.
const SUDO_SFTP: &str = "sudo -n sh -c 'for p in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server /usr/libexec/sftp-server; do [ -x \"$p\" ] && exec \"$p\"; done; echo sftp-server not found >&2; exit 127'";

/// Largest config file we read back; the runbook's files are a few hundred bytes.
const MAX_READ: u64 = 4 * 1024 * 1024;
const CHUNK: usize = CHUNK_U32 as usize;
const CHUNK_U32: u32 = 32 * 1024;

/// How the provider proves who it is to the Services machine.
#[derive(Clone, Debug)]
pub enum SshAuth {
    /// A private key in OpenSSH or PEM format.
    Key(Secret),
    /// A private key read from this file.
    KeyFile(PathBuf),
    /// Keys offered by the agent at SSH_AUTH_SOCK.
    Agent,
}

/// Which host keys the Services machine may present.
#[derive(Clone, Debug)]
pub enum HostKeyPolicy {
    /// Accept only these keys (one `known_hosts`-style key per entry).
    Pinned(Vec<PublicKey>),
    /// The keys listed for the host in this `known_hosts` file.
    KnownHosts(PathBuf),
    /// Accept any key. Explicit opt-in only; the provider warns at plan.
    Insecure,
}

/// How to reach the Services machine over SSH.
#[derive(Clone, Debug)]
pub struct SshConfig {
    /// Its host name or address.
    pub host: String,
    /// Its SSH port.
    pub port: u16,
    /// The login user.
    pub user: String,
    /// How to log in.
    pub auth: SshAuth,
    /// Which host keys to accept.
    pub host_key: HostKeyPolicy,
    /// Run commands and file writes as root through `sudo -n` (a non-root login).
    pub sudo: bool,
    /// The longest wait for the connection and for each operation.
    pub timeout: Duration,
}

impl SshConfig {
    /// `user@host:port`, for messages.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            format!("{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// What went wrong, where. Never contains key material. Every message names the
/// target (`user@host:port`) and, for file operations, the path.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The machine could not be reached, or the SSH session or SFTP could not start.
    #[error("{message}")]
    Connect {
        /// Which step, where.
        message: String,
        /// The library's error, when one caused it.
        #[source]
        source: Option<Cause>,
    },
    /// The host key is not the one configured.
    #[error("{0}")]
    HostKey(String),
    /// The login was refused, or the key could not be used.
    #[error("{message}")]
    Auth {
        /// Which step, where.
        message: String,
        /// The library's error, when one caused it.
        #[source]
        source: Option<Cause>,
    },
    /// A command could not be run to its end.
    #[error("running `{command}` on {target}: {step}")]
    Command {
        /// The command line, as shown in messages (secrets go on stdin, never here).
        command: String,
        /// `user@host:port`.
        target: String,
        /// Which step failed.
        step: String,
        /// The library's error, when one caused it.
        #[source]
        source: Option<Cause>,
    },
    /// A file operation failed: `detail` says why in words, or the SFTP library's
    /// error is the source.
    #[error("{op} {path} on {target}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Io {
        /// The operation: read, write, rename, …
        op: String,
        /// The file's path.
        path: String,
        /// `user@host:port`.
        target: String,
        /// The SFTP status code, when the server sent one.
        status: Option<StatusCode>,
        /// What went wrong, when it is known in words.
        detail: String,
        /// The library's error, when one caused it.
        #[source]
        source: Option<Cause>,
    },
}

/// The kind of an [`SshError`], for callers that act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshErrorKind {
    /// [`SshError::Connect`].
    Connect,
    /// [`SshError::HostKey`].
    HostKey,
    /// [`SshError::Auth`].
    Auth,
    /// [`SshError::Io`] and [`SshError::Command`].
    Io,
}

/// A library's error kept as the source of an [`SshError`].
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

impl SshError {
    /// [`SshError::Connect`] with no cause but its message.
    pub(crate) fn connect(message: impl Into<String>) -> Self {
        SshError::Connect {
            message: message.into(),
            source: None,
        }
    }

    /// [`SshError::Connect`] caused by `e`.
    pub(crate) fn connect_by(
        message: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SshError::Connect {
            message: message.into(),
            source: Some(Box::new(e)),
        }
    }

    /// [`SshError::Auth`] with no cause but its message.
    pub(crate) fn auth(message: impl Into<String>) -> Self {
        SshError::Auth {
            message: message.into(),
            source: None,
        }
    }

    /// [`SshError::Auth`] caused by `e`.
    pub(crate) fn auth_by(
        message: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SshError::Auth {
            message: message.into(),
            source: Some(Box::new(e)),
        }
    }

    /// Which kind of failure this is.
    pub fn kind(&self) -> SshErrorKind {
        match self {
            SshError::Connect { .. } => SshErrorKind::Connect,
            SshError::HostKey(_) => SshErrorKind::HostKey,
            SshError::Auth { .. } => SshErrorKind::Auth,
            SshError::Io { .. } | SshError::Command { .. } => SshErrorKind::Io,
        }
    }

    /// The Services machine refused a file operation for lack of rights.
    pub fn is_permission_denied(&self) -> bool {
        matches!(
            self,
            SshError::Io {
                status: Some(StatusCode::PermissionDenied),
                ..
            }
        )
    }
}

/// A file read back from the Services machine.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub content: Vec<u8>,
    /// Permission bits (e.g. 0o600).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl fmt::Debug for RemoteFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteFile")
            .field("content", &format_args!("<{} bytes>", self.content.len()))
            .field("mode", &format_args!("{:o}", self.mode))
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .finish()
    }
}

struct Session {
    handle: russh::client::Handle<Client>,
    sftp: RawSftpSession,
    posix_rename: bool,
    fsync: bool,
    /// One permit per command session sshd allows at once on this connection beside
    /// the SFTP channel ([`EXEC_SESSIONS`]): a command beyond them waits for one to
    /// end instead of being refused. Per connection, as sshd counts them: a command
    /// given up on holds its permit until sshd has let its session go (see
    /// `exec::abandon`), and a new connection starts with all of them.
    commands: Arc<tokio::sync::Semaphore>,
}

/// The Services machine. Cheap to create; connects on first use.
pub struct ServicesHost {
    cfg: SshConfig,
    session: Mutex<Option<Arc<Session>>>,
    counter: AtomicU64,
    /// Set when a request went unanswered within the timeout: the connection is in an
    /// unknown state (the machine or sshd may be frozen), so the next caller opens a
    /// new one.
    stale: AtomicBool,
    /// The local SOCKS5 end of the tunnel, started on first use.
    socks: std::sync::OnceLock<Result<tunnel::SocksBridge, String>>,
    /// Reached through this machine's SSH connection (a `direct-tcpip` channel) instead
    /// of a TCP connection from where Terraform runs.
    jump: Option<Arc<ServicesHost>>,
}

/// sshd's `MaxSessions` (10 unless configured) counts every session channel of one
/// connection: the SFTP channel is one, so nine commands may run at once. The
/// migration's databases, the readiness probes and the tools' starts all run
/// commands, and together they can want more (issue 28's review).
pub(crate) const EXEC_SESSIONS: usize = 9;

impl fmt::Debug for ServicesHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServicesHost")
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn sftp_status(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

fn ssh_string(out: &mut Vec<u8>, s: &str) {
    // The strings here are key types and names: far below 4 GiB.
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn parent_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

impl ServicesHost {
    /// A client for the machine in `cfg`; it connects on first use and keeps the connection.
    pub fn new(cfg: SshConfig) -> Self {
        ServicesHost {
            cfg,
            session: Mutex::new(None),
            counter: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            socks: std::sync::OnceLock::new(),
            jump: None,
        }
    }

    /// The same machine, reached through `via`'s SSH connection (as `ssh -J`).
    pub fn through(mut self, via: Arc<ServicesHost>) -> Self {
        self.jump = Some(via);
        self
    }

    /// The settings it was made with.
    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    async fn session(&self) -> Result<Arc<Session>, SshError> {
        let mut guard = self.session.lock().await;
        let stale = self.stale.swap(false, Ordering::Relaxed);
        if let Some(s) = guard.as_ref() {
            if !s.handle.is_closed() && !stale {
                return Ok(s.clone());
            }
            log::debug!(
                "SSH connection to {} was closed; reconnecting",
                self.cfg.target()
            );
        }
        let s = Arc::new(self.connect().await?);
        *guard = Some(s.clone());
        Ok(s)
    }

    fn io_err(&self, what: &str, path: &str, e: SftpError) -> SshError {
        let status = sftp_status(&e);
        let detail = match status {
            Some(StatusCode::PermissionDenied) => {
                if self.cfg.user != "root" && !self.cfg.sudo {
                    format!("permission denied (user {:?}, not as root)", self.cfg.user)
                } else {
                    "permission denied".to_string()
                }
            }
            Some(StatusCode::NoSuchFile) => "no such file or directory".to_string(),
            _ if matches!(e, SftpError::Timeout) => {
                self.stale.store(true, Ordering::Relaxed);
                format!(
                    "no answer within {}",
                    humantime::format_duration(self.cfg.timeout)
                )
            }
            _ => {
                return SshError::Io {
                    op: what.to_string(),
                    path: path.to_string(),
                    target: self.cfg.target(),
                    status,
                    detail: String::new(),
                    source: Some(Box::new(e)),
                }
            }
        };
        self.io(what, path, status, detail)
    }

    fn io(&self, op: &str, path: &str, status: Option<StatusCode>, detail: String) -> SshError {
        SshError::Io {
            op: op.to_string(),
            path: path.to_string(),
            target: self.cfg.target(),
            status,
            detail,
            source: None,
        }
    }

    /// [`Self::open_tunnel`], boxed: a machine reached through another (`through`)
    /// opens its connection with it, a recursion of future types the compiler can only
    /// check for `Send` when the type is named here.
    pub fn open_tunnel_boxed<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<russh::ChannelStream<russh::client::Msg>, DialError>,
                > + Send
                + 'a,
        >,
    > {
        Box::pin(self.open_tunnel(host, port))
    }

    /// A `direct-tcpip` channel to `host:port` from the Services machine, on the shared
    /// SSH connection: sshd resolves the name and connects. The channel open's failure
    /// reason tells the hops apart: sshd's refusal (`AllowTcpForwarding`, `PermitOpen`),
    /// or the backend it could not reach.
    pub async fn open_tunnel(
        &self,
        host: &str,
        port: u16,
    ) -> Result<russh::ChannelStream<russh::client::Msg>, DialError> {
        use russh::ChannelOpenFailure as F;
        let target = tunnel::host_port(host, port);
        let s = self.session().await.map_err(|source| DialError::Ssh {
            target: target.clone(),
            source,
        })?;
        let services = self.cfg.target();
        match s
            .handle
            .channel_open_direct_tcpip(host.to_string(), u32::from(port), "127.0.0.1".to_string(), 0)
            .await
        {
            Ok(ch) => Ok(ch.into_stream()),
            Err(russh::Error::ChannelOpenFailure(F::AdministrativelyProhibited)) => {
                Err(DialError::Refused {
                    services,
                    target,
                    reason: "administratively prohibited".into(),
                })
            }
            Err(russh::Error::ChannelOpenFailure(F::ConnectFailed)) => Err(DialError::Unreachable {
                services,
                target,
                reason: "connect failed (the server is down there, or its name or address is unknown or \
                         unreachable from the Services machine)"
                    .into(),
            }),
            Err(russh::Error::ChannelOpenFailure(f)) => Err(DialError::Unreachable {
                services,
                target,
                reason: format!("channel open failure {} ({f:?})", f.code()),
            }),
            Err(e) => {
                self.stale.store(true, Ordering::Relaxed);
                Err(DialError::Ssh {
                    target,
                    source: SshError::connect_by(
                        format!("opening a channel on the SSH connection to {services}"),
                        e,
                    ),
                })
            }
        }
    }

    /// The URL of a local SOCKS5 proxy whose connections go through this machine (for
    /// clients that only take a proxy); it holds a per-process password. Binds a
    /// loopback port on first use (inside the runtime); connects nothing.
    pub fn socks_proxy(self: &Arc<Self>) -> Result<Secret, String> {
        self.socks_bridge().map(tunnel::SocksBridge::proxy_url)
    }

    /// The local SOCKS5 end of the tunnel, started on first use (inside the runtime).
    pub fn socks_bridge(self: &Arc<Self>) -> Result<&tunnel::SocksBridge, String> {
        self.socks
            .get_or_init(|| tunnel::SocksBridge::start(self.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Why the proxy's last tunnel to `target` (`host:port`) failed, naming the hop.
    pub fn tunnel_failure(&self, target: &str) -> Option<Arc<tunnel::DialError>> {
        match self.socks.get() {
            Some(Ok(b)) => b.failure(target),
            _ => None,
        }
    }

    /// Connects now (if not yet connected). Used by tests and benchmarks.
    pub async fn check(&self) -> Result<(), SshError> {
        self.session().await.map(|_| ())
    }

    /// Reads a whole file; `Ok(None)` when it does not exist.
    pub async fn read_file(&self, path: &str) -> Result<Option<RemoteFile>, SshError> {
        let s = self.session().await?;
        let attrs = match s.sftp.stat(path).await {
            Ok(a) => a.attrs,
            Err(e) if sftp_status(&e) == Some(StatusCode::NoSuchFile) => return Ok(None),
            Err(e) => return Err(self.io_err("reading", path, e)),
        };
        if attrs.is_dir() {
            return Err(self.io("reading", path, None, "it is a directory".into()));
        }
        if attrs.size.unwrap_or(0) > MAX_READ {
            return Err(self.io(
                "reading",
                path,
                None,
                format!("larger than {MAX_READ} bytes; not a config file"),
            ));
        }
        let handle = match s
            .sftp
            .open(path, OpenFlags::READ, FileAttributes::default())
            .await
        {
            Ok(h) => h.handle,
            Err(e) if sftp_status(&e) == Some(StatusCode::NoSuchFile) => return Ok(None),
            Err(e) => return Err(self.io_err("reading", path, e)),
        };
        let mut content = Vec::new();
        let result = loop {
            match s
                .sftp
                .read(handle.as_str(), content.len() as u64, CHUNK_U32)
                .await
            {
                Ok(d) if d.data.is_empty() => break Ok(()),
                Ok(d) => {
                    let short = d.data.len() < CHUNK;
                    content.extend_from_slice(&d.data);
                    if content.len() as u64 > MAX_READ {
                        break Err(self.io(
                            "reading",
                            path,
                            None,
                            format!("the file grew past {MAX_READ} bytes"),
                        ));
                    }
                    // A regular file's read comes back short only at its end (sftp-server
                    // caps one read at 64 KiB or more, above CHUNK): past the size stat
                    // gave, the read that would only answer EOF is saved (a round trip on
                    // every file of every refresh).
                    if short && attrs.size.is_some_and(|n| content.len() as u64 >= n) {
                        break Ok(());
                    }
                }
                Err(e) if sftp_status(&e) == Some(StatusCode::Eof) => break Ok(()),
                Err(e) => break Err(self.io_err("reading", path, e)),
            }
        };
        // Nothing waits for the close's answer: the server answers in order, and
        // nothing that follows depends on the handle being gone.
        let bg = Arc::clone(&s);
        tokio::spawn(async move {
            let _ = bg.sftp.close(handle).await;
        });
        result?;
        Ok(Some(RemoteFile {
            content,
            mode: attrs.permissions.unwrap_or(0) & 0o7777,
            uid: attrs.uid.unwrap_or(0),
            gid: attrs.gid.unwrap_or(0),
        }))
    }

    /// Creates `dir` and its missing parents (mode 0755).
    async fn mkdir_p(&self, s: &Session, dir: &str) -> Result<(), SshError> {
        let mut missing = Vec::new();
        let mut d = dir;
        loop {
            match s.sftp.stat(d).await {
                Ok(a) if a.attrs.is_dir() => break,
                Ok(_) => {
                    return Err(self.io(
                        "creating directory",
                        d,
                        None,
                        "a file of that name exists".into(),
                    ))
                }
                Err(e) if sftp_status(&e) == Some(StatusCode::NoSuchFile) => {
                    missing.push(d.to_string());
                    let p = parent_of(d);
                    if p == d {
                        break;
                    }
                    d = p;
                }
                Err(e) => return Err(self.io_err("checking directory", d, e)),
            }
        }
        for m in missing.iter().rev() {
            let attrs = FileAttributes {
                permissions: Some(0o755),
                ..Default::default()
            };
            if let Err(e) = s.sftp.mkdir(m.as_str(), attrs).await {
                // Another writer may have created it meanwhile.
                if !matches!(s.sftp.stat(m.as_str()).await, Ok(a) if a.attrs.is_dir()) {
                    return Err(self.io_err("creating directory", m, e));
                }
            }
        }
        Ok(())
    }

    /// Makes `dir` a directory only its owner can enter (0700): created so, with its
    /// missing parents (0755), or its mode changed when it exists.
    pub async fn private_dir(&self, dir: &str) -> Result<(), SshError> {
        if !dir.starts_with('/') {
            return Err(self.io(
                "creating directory",
                dir,
                None,
                "not an absolute path".into(),
            ));
        }
        let s = self.session().await?;
        self.mkdir_p(&s, parent_of(dir)).await?;
        let private = || FileAttributes {
            permissions: Some(0o700),
            ..Default::default()
        };
        // lstat: a symbolic link there is refused, not followed.
        match s.sftp.lstat(dir).await {
            Ok(a) if a.attrs.is_dir() => {
                if a.attrs.permissions.map(|p| p & 0o7777) == Some(0o700) {
                    return Ok(());
                }
            }
            Ok(_) => {
                return Err(self.io(
                    "creating directory",
                    dir,
                    None,
                    "something that is not a directory (a file or a symbolic link) is there".into(),
                ))
            }
            Err(e) if sftp_status(&e) == Some(StatusCode::NoSuchFile) => {
                if let Err(e) = s.sftp.mkdir(dir, private()).await {
                    if !matches!(s.sftp.stat(dir).await, Ok(a) if a.attrs.is_dir()) {
                        return Err(self.io_err("creating directory", dir, e));
                    }
                }
            }
            Err(e) => return Err(self.io_err("checking directory", dir, e)),
        }
        // Also after mkdir: another writer may have made it first, with its own mode.
        s.sftp
            .setstat(dir, private())
            .await
            .map(|_| ())
            .map_err(|e| self.io_err("making directory private", dir, e))
    }

    /// Replaces `path` with `content` atomically: a temporary file in the same directory
    /// (created with `mode`, so a secret is never readable by others), fsync, chmod,
    /// chown to the old file's owner when replacing one, then rename over the target.
    /// Readers see the old file or the new one, never a mix. Parents are created.
    pub async fn write_file(&self, path: &str, content: &[u8], mode: u32) -> Result<(), SshError> {
        if !path.starts_with('/') {
            return Err(self.io("writing", path, None, "not an absolute path".into()));
        }
        let s = self.session().await?;
        let dir = parent_of(path);
        self.mkdir_p(&s, dir).await?;
        let old_owner = match s.sftp.stat(path).await {
            Ok(a) if a.attrs.is_dir() => {
                return Err(self.io("writing", path, None, "it is a directory".into()))
            }
            Ok(a) => a.attrs.uid.zip(a.attrs.gid),
            Err(_) => None,
        };
        let tmp = self.sibling(path, "tmp");
        let r = self
            .write_tmp_and_rename(&s, &tmp, path, content, mode, old_owner)
            .await;
        if r.is_err() {
            let _ = s.sftp.remove(tmp.as_str()).await;
        }
        r
    }

    /// Creates `path` with `content` and `mode` unless it exists: `Ok(false)`, and the
    /// file there is left as it is, when it does. The bytes go to a temporary file in
    /// the same directory, created with `mode` (so they are never readable by others,
    /// not even before the mode is set exactly), then linked into place by SFTP's plain
    /// rename, which never replaces an existing file (OpenSSH links, then unlinks the
    /// temporary name): of two writers racing to create the same file, one wins and the
    /// other finds the winner's bytes. The directory must exist.
    pub async fn create_new_file(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> Result<bool, SshError> {
        if !path.starts_with('/') {
            return Err(self.io("creating", path, None, "not an absolute path".into()));
        }
        let s = self.session().await?;
        let exists = |a: Result<russh_sftp::protocol::Attrs, SftpError>| match a {
            Ok(_) => Ok(true),
            Err(e) if sftp_status(&e) == Some(StatusCode::NoSuchFile) => Ok(false),
            Err(e) => Err(e),
        };
        if exists(s.sftp.lstat(path).await).map_err(|e| self.io_err("creating", path, e))? {
            return Ok(false);
        }
        let tmp = self.sibling(path, "new");
        let linked = match self.write_tmp(&s, &tmp, content, mode, None).await {
            Ok(()) => s.sftp.rename(tmp.as_str(), path).await.map(|_| ()),
            Err(e) => {
                let _ = s.sftp.remove(tmp.as_str()).await;
                return Err(e);
            }
        };
        match linked {
            Ok(()) => Ok(true),
            Err(e) => {
                let _ = s.sftp.remove(tmp.as_str()).await;
                // The rename's refusal of an existing target is a generic failure in
                // SFTP v3: look for the winner's file.
                match exists(s.sftp.lstat(path).await) {
                    Ok(true) => Ok(false),
                    _ => Err(self.io_err("creating", path, e)),
                }
            }
        }
    }

    /// A hidden file next to `path`, unique to this process and call:
    /// `DIR/.NAME.tf-PID-N.SUFFIX`.
    fn sibling(&self, path: &str, suffix: &str) -> String {
        let dir = parent_of(path);
        let name = path[dir.len()..].trim_start_matches('/');
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}/.{name}.tf-{}-{n}.{suffix}",
            if dir == "/" { "" } else { dir },
            std::process::id()
        )
    }

    /// Checks, before anything changes elsewhere, that `path` can be written: its
    /// directory is created if missing, and a probe file is created there (with the
    /// same flags and mode as a real write) and removed again.
    pub async fn check_writable(&self, path: &str) -> Result<(), SshError> {
        if !path.starts_with('/') {
            return Err(self.io("writing", path, None, "not an absolute path".into()));
        }
        let s = self.session().await?;
        let dir = parent_of(path);
        self.mkdir_p(&s, dir).await?;
        if let Ok(a) = s.sftp.stat(path).await {
            if a.attrs.is_dir() {
                return Err(self.io("writing", path, None, "it is a directory".into()));
            }
        }
        let probe = self.sibling(path, "probe");
        let attrs = FileAttributes {
            permissions: Some(0o600),
            ..Default::default()
        };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
        let handle = s
            .sftp
            .open(probe.as_str(), flags, attrs)
            .await
            .map_err(|e| self.io_err("creating a file in", dir, e))?
            .handle;
        let _ = s.sftp.close(handle).await;
        s.sftp
            .remove(probe.as_str())
            .await
            .map_err(|e| self.io_err("removing", &probe, e))?;
        Ok(())
    }

    async fn write_tmp_and_rename(
        &self,
        s: &Session,
        tmp: &str,
        path: &str,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SshError> {
        self.write_tmp(s, tmp, content, mode, owner).await?;
        self.rename(s, tmp, path).await
    }

    /// Creates `tmp` (it must not exist) with `mode`, writes `content`, sets the mode
    /// exactly (and `owner`, when given and allowed), syncs and closes it.
    async fn write_tmp(
        &self,
        s: &Session,
        tmp: &str,
        content: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<(), SshError> {
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..Default::default()
        };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE | OpenFlags::TRUNCATE;
        let handle = s
            .sftp
            .open(tmp, flags, attrs)
            .await
            .map_err(|e| self.io_err("creating", tmp, e))?
            .handle;
        let body = async {
            let mut off = 0usize;
            for chunk in content.chunks(CHUNK) {
                s.sftp
                    .write(handle.as_str(), off as u64, chunk.to_vec())
                    .await
                    .map_err(|e| self.io_err("writing", tmp, e))?;
                off += chunk.len();
            }
            // The mode given at open is reduced by the server's umask; set it exactly.
            let mut set = FileAttributes {
                permissions: Some(mode),
                ..Default::default()
            };
            if let Some((uid, gid)) = owner {
                set.uid = Some(uid);
                set.gid = Some(gid);
            }
            if let Err(e) = s.sftp.fsetstat(handle.as_str(), set).await {
                if owner.is_none() {
                    return Err(self.io_err("setting the mode of", tmp, e));
                }
                // Changing owner needs root; keep at least the mode right.
                let only_mode = FileAttributes {
                    permissions: Some(mode),
                    ..Default::default()
                };
                s.sftp
                    .fsetstat(handle.as_str(), only_mode)
                    .await
                    .map_err(|e| self.io_err("setting the mode of", tmp, e))?;
            }
            if s.fsync {
                s.sftp
                    .fsync(handle.as_str())
                    .await
                    .map_err(|e| self.io_err("syncing", tmp, e))?;
            }
            Ok::<_, SshError>(())
        }
        .await;
        let closed = s.sftp.close(handle).await;
        body?;
        closed.map_err(|e| self.io_err("closing", tmp, e))?;
        Ok(())
    }

    async fn rename(&self, s: &Session, from: &str, to: &str) -> Result<(), SshError> {
        if s.posix_rename {
            let mut data = Vec::new();
            ssh_string(&mut data, from);
            ssh_string(&mut data, to);
            match s.sftp.extended("posix-rename@openssh.com", data).await {
                Ok(Packet::Status(st)) if st.status_code == StatusCode::Ok => Ok(()),
                Ok(Packet::Status(st)) => Err(self.io(
                    "renaming",
                    from,
                    Some(st.status_code),
                    format!("to {to}: {}", st.error_message),
                )),
                Ok(_) => Err(self.io(
                    "renaming",
                    from,
                    None,
                    format!("to {to}: unexpected SFTP reply"),
                )),
                Err(e) => Err(self.io_err("renaming", from, e)),
            }
        } else {
            // Plain SFTP rename refuses to replace an existing file on most servers.
            let _ = s.sftp.remove(to).await;
            s.sftp
                .rename(from, to)
                .await
                .map(|_| ())
                .map_err(|e| self.io_err("renaming", from, e))
        }
    }

    /// Deletes a file; `Ok(false)` when it was already gone.
    pub async fn remove_file(&self, path: &str) -> Result<bool, SshError> {
        let s = self.session().await?;
        match s.sftp.remove(path).await {
            Ok(_) => Ok(true),
            Err(e) if sftp_status(&e) == Some(StatusCode::NoSuchFile) => Ok(false),
            Err(e) => Err(self.io_err("deleting", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn parent_paths() {
        assert_eq!(
            parent_of("/etc/circleconfig/shared/redis"),
            "/etc/circleconfig/shared"
        );
        assert_eq!(parent_of("/redis"), "/");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let a = SshAuth::Key(Secret::new("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(!format!("{a:?}").contains("BEGIN"));
    }

    #[test]
    fn host_key_parsing() {
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl comment";
        assert!(parse_host_key(line).is_ok());
        assert!(parse_host_key(&format!("[127.0.0.1]:2222 {line}")).is_ok());
        assert!(parse_host_key("nonsense").is_err());
        assert!(parse_host_key("ssh-ed25519 !!!").is_err());
    }
}
