//! What the state keeps about a written file, so refresh can tell it changed.
//!
//! A file without secrets gets its plain SHA-256. A file that holds a password or token
//! (the PostgreSQL, RabbitMQ, MongoDB and Vault ones) gets a keyed digest instead,
//! `hmac-sha256$KEYID$DIGEST`: HMAC-SHA256 of the provider's block of the file under a
//! 256-bit random key that exists only on the Services machine, in
//! `/data/circle/external-services-cutover/file-digest.key` (under the root of the
//! runbook's paths, as the cutover's other files; for a file elsewhere, in a directory
//! `.terraform-provider-circleci` beside it), mode 0600 in that 0700 directory,
//! owned by the account the provider works as there. KEYID is the first 4 bytes of the
//! key's SHA-256, in hex: it names the key without revealing it, so that a digest made
//! under a replaced key reads as changed (and is said to be) rather than as a file
//! edited out of band.
//!
//! Why a plain hash would not do: everything else in such a file is known to whoever
//! reads the state, so its SHA-256 would let them test password guesses offline at
//! SHA-256 speed. With the keyed digest the state alone allows no guessing at all: each
//! guess needs the key, and 256 random bits cannot be guessed. Whoever can read the key
//! on the Services machine (the login the provider uses, or root) can read the config
//! files themselves, passwords included, so the key gives them nothing more. The key
//! never leaves the Services machine except into this process's memory: it is not in
//! the state, in logs, in `Debug` output, in errors or on a command line.
//!
//! The key is made by the first apply (or import) that needs it: 32 bytes from the
//! system's generator, written over SFTP to a temporary file created 0600 in the 0700
//! directory, then linked into place without replacing a key another process made
//! first (that one is then read and used). Plan and refresh only read it; while there
//! is none, the plan's digest is unknown and refresh records [`NO_KEY`]. Once read or
//! made, it is kept in memory for the life of the provider process, per path on the
//! Services machine ([`KeyCache`]); nothing is kept across runs. A key file that others
//! may read, or that is not 32 bytes, is refused, never used.
//!
//! Earlier versions stored a salted, slow digest instead
//! (`pbkdf2-sha256$600000$SALT$DIGEST`, PBKDF2-HMAC-SHA256): every plan and refresh
//! paid 600,000 HMAC rounds (about 65 ms of CPU) per such file, and `file_sha256` feeds
//! `circleci_services_restart.triggers`, so a new value for an unchanged file would
//! restart CircleCI. Such a digest is therefore kept as it is while it matches the
//! file: refresh, plan and a write of the same content check it with its salt (once per
//! content and digest in a process, so a plan's refresh and the plan itself pay one
//! derivation) and keep it. When the content changes, the keyed digest replaces it. A
//! plan of a state holding a keyed digest derives nothing. A plain SHA-256 of such a
//! file, from before salted digests, is kept the same way while it matches: the state
//! already holds it, and a new value would restart CircleCI.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_lc_rs::{hmac, pbkdf2};
use base64::Engine;

use crate::backends::ssh::ServicesHost;
use crate::provider::ProviderData;

/// The digest of a file holding a secret: `hmac-sha256$KEYID$DIGEST`.
const SCHEME: &str = "hmac-sha256";
/// The digest earlier versions stored: `pbkdf2-sha256$600000$SALT$DIGEST`.
const OLD_SCHEME: &str = "pbkdf2-sha256";
/// The old digest's iterations; a stored count above it is not recomputed.
const ITERATIONS: u32 = 600_000;
/// The digest refresh records when the Services machine holds no key to compute one:
/// it matches no file, so the next plan writes the file (and makes the key).
pub(crate) const NO_KEY: &str = "hmac-sha256$no-key";

/// The length of a digest key, in bytes.
const KEY_LEN: usize = 32;
/// Where the digest key is, under the root of the Services machine's paths: in the
/// directory (0700) where the provider keeps its other files there.
pub(crate) const KEY_FILE: &str = "data/circle/external-services-cutover/file-digest.key";
/// For a file outside the runbook's paths, the directory (0700) beside it that holds
/// its key.
const OWN_DIR: &str = ".terraform-provider-circleci";

/// Whether a file holds a secret.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Plain,
    Secret,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

/// A Services machine's digest key. No `Display`; `Debug` shows its id only.
pub(crate) struct Key {
    key: hmac::Key,
    id: String,
}

impl Key {
    /// The key made of `bytes` (a key file's content).
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != KEY_LEN {
            return Err(format!(
                "it holds {} bytes, not the {KEY_LEN} of a key this provider made",
                bytes.len()
            ));
        }
        let id = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        Ok(Key {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            id: id.as_ref()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Where a Services machine's digest key comes from.
#[async_trait]
pub(crate) trait KeySource: Send + Sync {
    /// The key, or `None` when there is none yet (or none can be known yet). Never
    /// makes one.
    async fn find(&self) -> Result<Option<Arc<Key>>, String>;
    /// [`Self::find`] for a plan: a key that cannot be read in time (the Services
    /// machine unreachable from here, say) is not known, which leaves the planned
    /// digest unknown, as it was before a key existed; a key that is there but unusable
    /// is still an error.
    async fn find_for_plan(&self) -> Result<Option<Arc<Key>>, String> {
        self.find().await
    }
    /// The key, made when there is none yet.
    async fn find_or_make(&self) -> Result<Arc<Key>, String>;
}

/// The digest keys read or made by this provider process, by path: kept in memory for
/// the process's life only.
#[derive(Default)]
pub(crate) struct KeyCache(
    tokio::sync::Mutex<HashMap<String, Arc<Key>>>,
    /// Keys a plan could not read in time: the plan's other files do not wait again.
    std::sync::Mutex<std::collections::HashSet<String>>,
);

impl KeyCache {
    /// Holds the key made of `bytes` for `path`, as if read from the Services machine.
    #[cfg(test)]
    pub(crate) fn seed(&self, path: &str, bytes: &[u8]) {
        if let (Ok(mut m), Ok(k)) = (self.0.try_lock(), Key::from_bytes(bytes)) {
            m.insert(path.to_string(), Arc::new(k));
        }
    }

    /// Forgets every key (the Services machine was configured again).
    pub(crate) async fn clear(&self) {
        self.0.lock().await.clear();
        self.1.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Whether a plan already failed to read the key at `path`.
    fn unreadable(&self, path: &str) -> bool {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(path)
    }

    /// Records that a plan could not read the key at `path`.
    fn set_unreadable(&self, path: &str) {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string());
    }
}

/// The key on the Services machine for files under one root.
pub(crate) struct ServicesKeys<'a> {
    data: &'a ProviderData,
    /// `None` while the file's path is not known.
    path: Option<String>,
}

impl<'a> ServicesKeys<'a> {
    /// The key for the file at `file` (`None` when not known yet): the one under the
    /// root `file` is in, when it is one of the runbook's files; else the one in
    /// [`OWN_DIR`] beside the file (a directory of its own, so that the file's own
    /// directory keeps its mode).
    pub(crate) fn for_file(data: &'a ProviderData, file: Option<&str>) -> Self {
        let path = file.map(|f| match super::cutover::runbook_file(f) {
            Some((root, _)) => format!("{}/{KEY_FILE}", root.trim_end_matches('/')),
            None => {
                let dir = f.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{dir}/{OWN_DIR}/file-digest.key")
            }
        });
        ServicesKeys { data, path }
    }
}

impl ServicesKeys<'_> {
    /// The key file's path, when known.
    pub(crate) fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

#[async_trait]
impl KeySource for ServicesKeys<'_> {
    async fn find(&self) -> Result<Option<Arc<Key>>, String> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let mut cache = self.data.digest_keys().0.lock().await;
        if let Some(k) = cache.get(path) {
            return Ok(Some(k.clone()));
        }
        // A machine the provider cannot name yet (its settings are not known at this
        // plan) has no key known either.
        let Ok(host) = self.data.services() else {
            return Ok(None);
        };
        let found = read_key(&host, path).await?;
        if let Some(k) = &found {
            cache.insert(path.clone(), k.clone());
        }
        Ok(found)
    }

    async fn find_for_plan(&self) -> Result<Option<Arc<Key>>, String> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let keys = self.data.digest_keys();
        let mut cache = keys.0.lock().await;
        if let Some(k) = cache.get(path) {
            return Ok(Some(k.clone()));
        }
        if keys.unreadable(path) {
            return Ok(None);
        }
        let Ok(host) = self.data.services() else {
            return Ok(None);
        };
        let limit = super::config_file::PLAN_READ;
        match tokio::time::timeout(limit, host.read_file(path)).await {
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(f))) => {
                let k = key_in(&host, path, &f)?;
                cache.insert(path.clone(), k.clone());
                Ok(Some(k))
            }
            Ok(Err(e)) => {
                keys.set_unreadable(path);
                log::warn!(
                    "the file digest key {path} could not be read for the plan ({}); the digest \
                     is shown as known after apply",
                    crate::backends::chain(&e)
                );
                Ok(None)
            }
            Err(_) => {
                keys.set_unreadable(path);
                log::warn!(
                    "the file digest key {path} could not be read within {} for the plan; the \
                     digest is shown as known after apply",
                    humantime::format_duration(limit)
                );
                Ok(None)
            }
        }
    }

    async fn find_or_make(&self) -> Result<Arc<Key>, String> {
        let Some(path) = &self.path else {
            return Err("the file's path is not known yet, nor where its digest key is".into());
        };
        let mut cache = self.data.digest_keys().0.lock().await;
        if let Some(k) = cache.get(path) {
            return Ok(k.clone());
        }
        let host = self.data.services().map_err(|d| {
            d.0.iter()
                .map(|d| format!("{}: {}", d.summary, d.detail))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let key = match read_key(&host, path).await? {
            Some(k) => k,
            None => make_key(&host, path, aws_lc_rs::rand::fill).await?,
        };
        cache.insert(path.clone(), key.clone());
        Ok(key)
    }
}

/// What went wrong with the key file at `path`, for an error (never its content).
fn key_error(what: &str, path: &str, e: &crate::backends::ssh::SshError) -> String {
    format!(
        "{what} the file digest key {path}: {}",
        crate::backends::chain(e)
    )
}

/// The key in the file at `path` on `host`; `None` when there is no such file. A key
/// others may read, or a file that is not a key, is an error, and is not used.
async fn read_key(host: &ServicesHost, path: &str) -> Result<Option<Arc<Key>>, String> {
    let Some(f) = host
        .read_file(path)
        .await
        .map_err(|e| key_error("reading", path, &e))?
    else {
        return Ok(None);
    };
    key_in(host, path, &f).map(Some)
}

/// The key in `f`, read from `path` on `host`: refused when others may read it, or
/// when it is not a key.
fn key_in(
    host: &ServicesHost,
    path: &str,
    f: &crate::backends::ssh::RemoteFile,
) -> Result<Arc<Key>, String> {
    let target = host.config().target();
    if f.mode & 0o077 != 0 {
        return Err(format!(
            "the file digest key {path} on {target} may be read by others (mode {:o}): it must be \
             0600 (or 0400). Run chmod 600 {path} there, or remove it: the next apply then makes a \
             new key and writes every file that holds a secret again, and the restarts whose \
             triggers name their file_sha256 run",
            f.mode
        ));
    }
    Key::from_bytes(&f.content).map(Arc::new).map_err(|e| {
        format!(
            "the file digest key {path} on {target} is not usable: {e}. Remove it: the next apply \
             then makes a new key and writes every file that holds a secret again"
        )
    })
}

/// Makes the key at `path` on `host`: 32 random bytes, in a file created 0600 in a
/// directory made 0700, never replacing a key another process made first (then that
/// one is read and used).
async fn make_key(host: &ServicesHost, path: &str, fill: Fill) -> Result<Arc<Key>, String> {
    let mut bytes = new_key_bytes(fill)?;
    let key = Arc::new(Key::from_bytes(&bytes)?);
    let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
    host.private_dir(dir)
        .await
        .map_err(|e| key_error("making the directory of", path, &e))?;
    let made = host
        .create_new_file(path, &bytes, 0o600)
        .await
        .map_err(|e| key_error("making", path, &e))?;
    bytes.fill(0);
    if made {
        log::info!(
            "made the file digest key {path} on {} (0600)",
            host.config().target()
        );
        return Ok(key);
    }
    read_key(host, path).await?.ok_or_else(|| {
        format!("the file digest key {path} was made by another process, then removed")
    })
}

/// A new key's bytes; a failing random generator is an error, never a fixed key.
fn new_key_bytes(fill: Fill) -> Result<[u8; KEY_LEN], String> {
    let mut bytes = [0u8; KEY_LEN];
    fill(&mut bytes).map_err(|_| {
        "the system's random number generator failed, so no key could be made for the \
         file's digest; nothing was written"
            .to_string()
    })?;
    Ok(bytes)
}

/// The salt, iterations and derived bytes of an old salted digest, when `d` is one.
fn params(d: &str) -> Option<(std::num::NonZeroU32, Vec<u8>, Vec<u8>)> {
    let mut parts = d.split('$');
    if parts.next()? != OLD_SCHEME {
        return None;
    }
    let iterations: u32 = parts.next()?.parse().ok()?;
    let salt = b64().decode(parts.next()?).ok()?;
    let derived = b64().decode(parts.next()?).ok()?;
    // A count above ours (a tampered state) is not recomputed: it could pin a thread
    // for hours. The digest then reads as different, and the file is written again.
    if iterations > ITERATIONS || salt.is_empty() || derived.len() != 32 || parts.next().is_some() {
        return None;
    }
    Some((std::num::NonZeroU32::new(iterations)?, salt, derived))
}

/// Fills a buffer with random bytes: the system's generator, or a test's.
type Fill = fn(&mut [u8]) -> Result<(), aws_lc_rs::error::Unspecified>;

/// Runs `f` (PBKDF2: a fraction of a second of CPU) on a blocking thread, off the
/// async runtime's threads that serve Terraform's other calls.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("computing the file's digest did not finish: {e}"))
}

/// What old digests were checked against in this process: (the digest, the SHA-256
/// of the content) -> whether it matched. A plan's refresh and the plan itself check
/// a file once between them. Memory only, for the process's life.
type Checked = std::sync::Mutex<HashMap<(String, Vec<u8>), bool>>;

fn checked() -> &'static Checked {
    static CHECKED: std::sync::OnceLock<Checked> = std::sync::OnceLock::new();
    CHECKED.get_or_init(Default::default)
}

/// Whether `stored` is an old salted digest of `content` (PBKDF2 with its salt:
/// 600,000 rounds, once per content and digest in this process).
async fn old_matches(content: &[u8], stored: &str) -> Result<bool, String> {
    let Some((iterations, salt, derived)) = params(stored) else {
        return Ok(false);
    };
    let id = (
        stored.to_string(),
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content)
            .as_ref()
            .to_vec(),
    );
    if let Some(m) = checked().lock().ok().and_then(|c| c.get(&id).copied()) {
        return Ok(m);
    }
    let content = content.to_vec();
    let matches = off_runtime(move || {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            &content,
            &derived,
        )
        .is_ok()
    })
    .await?;
    if let Ok(mut c) = checked().lock() {
        if c.len() >= 1024 {
            c.clear();
        }
        c.insert(id, matches);
    }
    Ok(matches)
}

/// The keyed digest of `content` under `key`.
fn keyed(key: &Key, content: &[u8]) -> String {
    let tag = hmac::sign(&key.key, content);
    format!("{SCHEME}${}${}", key.id, b64().encode(tag.as_ref()))
}

/// The digest to store for a file just written (or imported) with `content`:
/// `previous` (the prior state's) when it is an old salted digest of this very content,
/// else the keyed digest, the key made when the Services machine has none yet.
pub(crate) async fn digest(
    kind: Kind,
    content: &[u8],
    previous: Option<&str>,
    keys: &dyn KeySource,
) -> Result<String, String> {
    if kind == Kind::Plain {
        return Ok(super::file_sha256(content));
    }
    if let Some(p) = previous {
        if p == super::file_sha256(content) || old_matches(content, p).await? {
            return Ok(p.to_string());
        }
    }
    Ok(keyed(&*keys.find_or_make().await?, content))
}

/// The digest a plan can show, the one [`digest`] will store: `None` when it depends
/// on a key the Services machine does not hold yet.
pub(crate) async fn planned(
    kind: Kind,
    content: &[u8],
    previous: Option<&str>,
    keys: &dyn KeySource,
) -> Result<Option<String>, String> {
    if kind == Kind::Plain {
        return Ok(Some(super::file_sha256(content)));
    }
    if let Some(p) = previous {
        if p == super::file_sha256(content) || old_matches(content, p).await? {
            return Ok(Some(p.to_string()));
        }
    }
    Ok(keys.find_for_plan().await?.map(|k| keyed(&k, content)))
}

/// The digest of the file as it is now, comparable with `stored` (the state's):
/// `stored` itself when it is an old digest (salted, or the plain hash of a state from
/// before salted digests) of this very content; else the keyed digest, or [`NO_KEY`]
/// when the Services machine holds no key (it differs from every stored digest).
/// Refresh never makes a key.
pub(crate) async fn current(
    kind: Kind,
    content: &[u8],
    stored: Option<&str>,
    keys: &dyn KeySource,
) -> Result<String, String> {
    let plain = super::file_sha256(content);
    if kind == Kind::Plain {
        return Ok(plain);
    }
    if let Some(s) = stored {
        if s == plain || old_matches(content, s).await? {
            return Ok(s.to_string());
        }
    }
    Ok(match keys.find().await? {
        Some(k) => keyed(&k, content),
        None => NO_KEY.to_string(),
    })
}

/// Whether `now` differs from `before` because the digest key was replaced or removed
/// (both are keyed digests, under keys with different ids).
pub(crate) fn key_replaced(before: &str, now: &str) -> bool {
    matches!((key_id(before), key_id(now)), (Some(a), Some(b)) if a != b)
}

/// The key id of a keyed digest.
fn key_id(d: &str) -> Option<&str> {
    let mut p = d.split('$');
    if p.next() != Some(SCHEME) {
        return None;
    }
    p.next()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A key source in memory, as a Services machine would hold one: none until
    /// `find_or_make` makes it (or the test gives one).
    #[derive(Default)]
    pub(crate) struct MemoryKeys {
        key: Mutex<Option<Arc<Key>>>,
        pub(crate) bytes: Mutex<Option<Vec<u8>>>,
    }

    impl MemoryKeys {
        /// A source that holds the key made of `bytes`.
        pub(crate) fn with(bytes: &[u8]) -> Self {
            let k = MemoryKeys::default();
            *k.key.lock().unwrap() = Some(Arc::new(Key::from_bytes(bytes).unwrap()));
            *k.bytes.lock().unwrap() = Some(bytes.to_vec());
            k
        }
    }

    #[async_trait]
    impl KeySource for MemoryKeys {
        async fn find(&self) -> Result<Option<Arc<Key>>, String> {
            Ok(self.key.lock().unwrap().clone())
        }

        async fn find_or_make(&self) -> Result<Arc<Key>, String> {
            let mut k = self.key.lock().unwrap();
            if k.is_none() {
                let mut bytes = [0u8; KEY_LEN];
                aws_lc_rs::rand::fill(&mut bytes).unwrap();
                *k = Some(Arc::new(Key::from_bytes(&bytes).unwrap()));
                *self.bytes.lock().unwrap() = Some(bytes.to_vec());
            }
            Ok(k.clone().unwrap())
        }
    }

    /// The old scheme's digest with a fresh salt, as a state from before holds it.
    fn old(content: &[u8]) -> String {
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(&mut salt).unwrap();
        let mut out = [0u8; 32];
        let n = std::num::NonZeroU32::new(ITERATIONS).unwrap();
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, &salt, content, &mut out);
        format!(
            "pbkdf2-sha256$600000${}${}",
            b64().encode(salt),
            b64().encode(out)
        )
    }

    const FILE: &[u8] = b"export RABBITMQ_PASSWORD=\"hunter2\"\n";

    #[tokio::test]
    async fn an_old_digest_of_unchanged_content_stays_identical() {
        let before = old(FILE);
        // No key on the machine yet, and a key there: the same value, at refresh and
        // at plan, and at an apply that writes the same content again.
        for keys in [MemoryKeys::default(), MemoryKeys::with(&[7; KEY_LEN])] {
            assert_eq!(
                current(Kind::Secret, FILE, Some(&before), &keys)
                    .await
                    .unwrap(),
                before
            );
            assert_eq!(
                planned(Kind::Secret, FILE, Some(&before), &keys)
                    .await
                    .unwrap(),
                Some(before.clone())
            );
            assert_eq!(
                digest(Kind::Secret, FILE, Some(&before), &keys)
                    .await
                    .unwrap(),
                before
            );
        }
    }

    #[tokio::test]
    async fn changed_content_gets_the_keyed_digest() {
        let before = old(FILE);
        let changed = b"export RABBITMQ_PASSWORD=\"hunter3\"\n";
        let keys = MemoryKeys::with(&[7; KEY_LEN]);
        let now = digest(Kind::Secret, changed, Some(&before), &keys)
            .await
            .unwrap();
        assert!(now.starts_with("hmac-sha256$"), "{now}");
        assert_eq!(
            planned(Kind::Secret, changed, Some(&before), &keys)
                .await
                .unwrap(),
            Some(now.clone())
        );
        assert_eq!(
            current(Kind::Secret, changed, Some(&before), &keys)
                .await
                .unwrap(),
            now
        );
        // No key yet: the plan cannot know it; the apply makes the key.
        let none = MemoryKeys::default();
        assert_eq!(
            planned(Kind::Secret, changed, Some(&before), &none)
                .await
                .unwrap(),
            None
        );
        let made = digest(Kind::Secret, changed, Some(&before), &none)
            .await
            .unwrap();
        assert!(made.starts_with("hmac-sha256$"), "{made}");
        assert!(none.bytes.lock().unwrap().is_some(), "the apply made a key");
        // A new file (no prior digest) too.
        assert_eq!(
            planned(Kind::Secret, FILE, None, &MemoryKeys::default())
                .await
                .unwrap(),
            None
        );
        let new = digest(Kind::Secret, FILE, None, &keys).await.unwrap();
        assert!(new.starts_with("hmac-sha256$"), "{new}");
    }

    #[tokio::test]
    async fn the_keyed_digest_depends_on_the_key_and_the_content() {
        let (a, b) = (
            MemoryKeys::with(&[1; KEY_LEN]),
            MemoryKeys::with(&[2; KEY_LEN]),
        );
        let d = digest(Kind::Secret, FILE, None, &a).await.unwrap();
        // Deterministic under one key: plan, refresh and a rewrite agree.
        assert_eq!(digest(Kind::Secret, FILE, None, &a).await.unwrap(), d);
        assert_eq!(digest(Kind::Secret, FILE, Some(&d), &a).await.unwrap(), d);
        assert_eq!(
            planned(Kind::Secret, FILE, Some(&d), &a).await.unwrap(),
            Some(d.clone())
        );
        assert_eq!(current(Kind::Secret, FILE, Some(&d), &a).await.unwrap(), d);
        // Another content, another key: another digest.
        assert_ne!(
            digest(Kind::Secret, b"other", Some(&d), &a).await.unwrap(),
            d
        );
        assert_ne!(digest(Kind::Secret, FILE, None, &b).await.unwrap(), d);
        assert_ne!(
            current(Kind::Secret, b"other", Some(&d), &a).await.unwrap(),
            d
        );
    }

    #[tokio::test]
    async fn a_replaced_key_reads_as_changed() {
        let (a, b) = (
            MemoryKeys::with(&[1; KEY_LEN]),
            MemoryKeys::with(&[2; KEY_LEN]),
        );
        let d = digest(Kind::Secret, FILE, None, &a).await.unwrap();
        let after = current(Kind::Secret, FILE, Some(&d), &b).await.unwrap();
        assert_ne!(after, d);
        let id = |d: &str| d.split('$').nth(1).map(str::to_string);
        assert_ne!(
            id(&after),
            id(&d),
            "the key id tells the keys apart: {d} {after}"
        );
        assert!(key_replaced(&d, &after));
        assert!(!key_replaced(
            &d,
            &current(Kind::Secret, b"x", Some(&d), &a).await.unwrap()
        ));
        // The key gone from the machine: changed too, and the plan cannot know the next.
        let none = MemoryKeys::default();
        assert_ne!(
            current(Kind::Secret, FILE, Some(&d), &none).await.unwrap(),
            d
        );
        assert_eq!(
            planned(Kind::Secret, FILE, Some(&d), &none).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn the_key_is_not_in_the_digest() {
        let bytes = [0x5a; KEY_LEN];
        let keys = MemoryKeys::with(&bytes);
        let d = digest(Kind::Secret, FILE, None, &keys).await.unwrap();
        let key = keys.find().await.unwrap().unwrap();
        for shown in [d.clone(), format!("{key:?}")] {
            assert!(!shown.contains(&b64().encode(bytes)), "{shown}");
            assert!(
                !shown.contains(&crate::resources::file_sha256(&bytes)[..16]),
                "{shown}"
            );
            assert!(!shown.contains(&"5a".repeat(8)), "{shown}");
        }
        assert!(!d.contains(&crate::resources::file_sha256(FILE)), "{d}");
    }

    /// A runbook file's key is with the cutover's files under its root; any other
    /// file's is in a directory of its own beside it (whose mode the key may set,
    /// unlike the file's own directory's), never in the host's `/data`.
    #[test]
    fn the_key_is_under_the_runbook_root_or_beside_the_file() {
        let data = ProviderData::default();
        let at = |f: &str| {
            ServicesKeys::for_file(&data, Some(f))
                .path()
                .map(str::to_string)
        };
        assert_eq!(
            at("/etc/circleconfig/shared/redis").as_deref(),
            Some("/data/circle/external-services-cutover/file-digest.key")
        );
        assert_eq!(
            at("/tmp/x/etc/circle-installation-customizations").as_deref(),
            Some("/tmp/x/data/circle/external-services-cutover/file-digest.key")
        );
        assert_eq!(
            at("/srv/conf/postgres.env").as_deref(),
            Some("/srv/conf/.terraform-provider-circleci/file-digest.key")
        );
        assert_eq!(ServicesKeys::for_file(&data, None).path(), None);
    }

    #[tokio::test]
    async fn plain_files_and_old_plain_states() {
        let keys = MemoryKeys::default();
        // Files without secrets keep the plain SHA-256, and need no key.
        assert_eq!(
            digest(Kind::Plain, b"abc", None, &keys).await.unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(keys.bytes.lock().unwrap().is_none());
        // A plain hash of a secret file (a state from before salted digests) reads as
        // unchanged at refresh while the file is...
        let plain = crate::resources::file_sha256(FILE);
        assert_eq!(
            current(Kind::Secret, FILE, Some(&plain), &keys)
                .await
                .unwrap(),
            plain
        );
        // ...and is kept by the plan and by a write of the same content: a new value
        // would restart CircleCI (`triggers`), and the state already holds this one.
        let keys = MemoryKeys::with(&[3; KEY_LEN]);
        let p = planned(Kind::Secret, FILE, Some(&plain), &keys)
            .await
            .unwrap();
        assert_eq!(p.as_deref(), Some(plain.as_str()));
        assert_eq!(
            digest(Kind::Secret, FILE, Some(&plain), &keys)
                .await
                .unwrap(),
            plain
        );
        // Changed: no plain hash of the new content goes to the state.
        let now = current(Kind::Secret, b"x", Some(&plain), &MemoryKeys::default())
            .await
            .unwrap();
        assert_ne!(now, plain);
        assert_ne!(now, crate::resources::file_sha256(b"x"));
    }

    /// A stored digest asking for more iterations than ours (a tampered state) is not
    /// recomputed with them.
    #[test]
    fn a_stored_count_above_ours_is_not_used() {
        let d = b64().encode([0u8; 32]);
        assert!(params(&format!("pbkdf2-sha256$600000$AAAA${d}")).is_some());
        assert!(params(&format!("pbkdf2-sha256$4294967295$AAAA${d}")).is_none());
        assert!(params(&format!("pbkdf2-sha256$600001$AAAA${d}")).is_none());
        assert!(params(&format!("pbkdf2-sha256$0$AAAA${d}")).is_none());
        assert!(params("pbkdf2-sha256$600000$AAAA$AAAA").is_none());
    }

    #[test]
    fn a_failing_random_generator_is_an_error_not_a_fixed_key() {
        let broken: Fill = |_| Err(aws_lc_rs::error::Unspecified);
        let e = new_key_bytes(broken).unwrap_err();
        assert!(e.contains("random"), "{e}");
        assert_ne!(new_key_bytes(aws_lc_rs::rand::fill).unwrap(), [0; KEY_LEN]);
    }

    /// An old digest is checked once per content in a process: a plan's refresh and
    /// the plan itself pay for one PBKDF2.
    #[tokio::test]
    async fn an_old_digest_is_checked_once() {
        let before = old(b"once");
        let t = std::time::Instant::now();
        assert!(old_matches(b"once", &before).await.unwrap());
        let first = t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..10 {
            assert!(old_matches(b"once", &before).await.unwrap());
        }
        assert!(t.elapsed() < first, "{:?} then {:?}", first, t.elapsed());
        assert!(!old_matches(b"twice", &before).await.unwrap());
    }

    #[test]
    fn a_key_file_of_another_length_is_refused() {
        assert!(Key::from_bytes(&[0; 31]).is_err());
        assert!(Key::from_bytes(&[0; 33]).is_err());
        assert!(Key::from_bytes(&[0; KEY_LEN]).is_ok());
    }
}
