//! What the state keeps about a written file, so refresh can tell it changed. A file
//! without secrets gets its plain SHA-256. A file that holds a password or token gets a
//! salted, slow digest instead: PBKDF2-HMAC-SHA256, 600,000 iterations (OWASP's figure for it), a 16-byte
//! random salt kept in the value (`pbkdf2-sha256$600000$SALT$DIGEST`). Everything else
//! in such a file is known to whoever reads the state, so a plain hash would let them
//! test password guesses offline at SHA-256 speed; this makes every guess cost 600,000
//! HMAC rounds. The salt is reused while the state has one, so an unchanged file keeps
//! its digest and plans stay empty.

use aws_lc_rs::pbkdf2;
use base64::Engine;

const SCHEME: &str = "pbkdf2-sha256";
const ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;

/// Whether a file holds a secret.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Plain,
    Salted,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD_NO_PAD
}

/// The salt and iterations of a salted digest, when `d` is one.
fn params(d: &str) -> Option<(u32, Vec<u8>)> {
    let mut parts = d.split('$');
    if parts.next()? != SCHEME {
        return None;
    }
    let iterations = parts.next()?.parse().ok()?;
    let salt = b64().decode(parts.next()?).ok()?;
    // A count above ours (a tampered state) is not recomputed: it could pin a thread
    // for hours. The digest then reads as different, and the file is written again.
    (iterations > 0 && iterations <= ITERATIONS && !salt.is_empty()).then_some((iterations, salt))
}

fn salted(content: &[u8], iterations: u32, salt: &[u8]) -> String {
    let mut out = [0u8; 32];
    let n = std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, n, salt, content, &mut out);
    format!(
        "{SCHEME}${iterations}${}${}",
        b64().encode(salt),
        b64().encode(out)
    )
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

/// A new salt; a failing random generator is an error, never a fixed salt.
fn new_salt(fill: Fill) -> Result<Vec<u8>, String> {
    let mut salt = vec![0u8; SALT_LEN];
    fill(&mut salt).map_err(|_| {
        "the system's random number generator failed, so no salt could be drawn for the \
         file's digest; nothing was written to the state"
            .to_string()
    })?;
    Ok(salt)
}

/// The digest to store for `content`. A salted one reuses the salt of `previous` (the
/// digest in the prior state), or draws a new one.
pub(crate) async fn digest(
    kind: Kind,
    content: &[u8],
    previous: Option<&str>,
) -> Result<String, String> {
    if kind == Kind::Plain {
        return Ok(super::file_sha256(content));
    }
    let (content, previous) = (content.to_vec(), previous.map(str::to_string));
    off_runtime(move || digest_with(kind, &content, previous.as_deref(), aws_lc_rs::rand::fill))
        .await?
}

fn digest_with(
    kind: Kind,
    content: &[u8],
    previous: Option<&str>,
    fill: Fill,
) -> Result<String, String> {
    Ok(match kind {
        Kind::Plain => super::file_sha256(content),
        Kind::Salted => {
            let (iterations, salt) = match previous.and_then(params) {
                Some(p) => p,
                None => (ITERATIONS, new_salt(fill)?),
            };
            salted(content, iterations, &salt)
        }
    })
}

/// The digest a plan can show: `None` when it depends on a salt not drawn yet.
pub(crate) async fn planned(
    kind: Kind,
    content: &[u8],
    previous: Option<&str>,
) -> Result<Option<String>, String> {
    match (kind, previous.and_then(params)) {
        (Kind::Plain, _) => Ok(Some(super::file_sha256(content))),
        (Kind::Salted, None) => Ok(None),
        (Kind::Salted, Some((i, salt))) => {
            let content = content.to_vec();
            off_runtime(move || Some(salted(&content, i, &salt))).await
        }
    }
}

/// The digest of the file as it is now, comparable with `stored` (the state's): with
/// its salt, or plain when the state holds a plain hash (written before this scheme).
pub(crate) async fn current(
    kind: Kind,
    content: &[u8],
    stored: Option<&str>,
) -> Result<String, String> {
    match (kind, stored.and_then(params)) {
        (Kind::Salted, Some((i, salt))) => {
            let content = content.to_vec();
            off_runtime(move || salted(&content, i, &salt)).await
        }
        (Kind::Salted, None) if stored.is_none_or(str::is_empty) => {
            digest(kind, content, None).await
        }
        _ => Ok(super::file_sha256(content)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn salted_digests_keep_their_salt_and_hide_the_plain_hash() {
        let file = b"export RABBITMQ_PASSWORD=\"hunter2\"\n";
        let d1 = digest(Kind::Salted, file, None).await.unwrap();
        assert!(d1.starts_with("pbkdf2-sha256$600000$"), "{d1}");
        assert!(!d1.contains(&crate::resources::file_sha256(file)));
        // The same salt: the same digest, for the plan and for refresh.
        assert_eq!(digest(Kind::Salted, file, Some(&d1)).await.unwrap(), d1);
        assert_eq!(
            planned(Kind::Salted, file, Some(&d1))
                .await
                .unwrap()
                .as_deref(),
            Some(d1.as_str())
        );
        assert_eq!(current(Kind::Salted, file, Some(&d1)).await.unwrap(), d1);
        // Another file: another digest; a new salt: another digest.
        assert_ne!(digest(Kind::Salted, b"other", Some(&d1)).await.unwrap(), d1);
        assert_ne!(digest(Kind::Salted, file, None).await.unwrap(), d1);
        // No salt yet: the plan cannot know it.
        assert_eq!(planned(Kind::Salted, file, None).await.unwrap(), None);
        // Files without secrets keep the plain SHA-256.
        assert_eq!(
            digest(Kind::Plain, b"abc", None).await.unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // A state from before compares as plain.
        let old = crate::resources::file_sha256(file);
        assert_eq!(current(Kind::Salted, file, Some(&old)).await.unwrap(), old);
    }

    /// A stored digest asking for more iterations than ours (a tampered state) is not
    /// recomputed with them.
    #[test]
    fn a_stored_count_above_ours_is_not_used() {
        assert!(params("pbkdf2-sha256$600000$AAAA$x").is_some());
        assert!(params("pbkdf2-sha256$4294967295$AAAA$x").is_none());
        assert!(params("pbkdf2-sha256$600001$AAAA$x").is_none());
    }

    #[test]
    fn a_failing_random_generator_is_an_error_not_a_fixed_salt() {
        let broken: Fill = |_| Err(aws_lc_rs::error::Unspecified);
        let e = digest_with(Kind::Salted, b"secret file", None, broken).unwrap_err();
        assert!(e.contains("random"), "{e}");
        // A digest that keeps its salt needs no randomness; a plain one neither.
        let d = digest_with(Kind::Salted, b"f", None, aws_lc_rs::rand::fill).unwrap();
        assert_eq!(
            digest_with(Kind::Salted, b"f", Some(&d), broken).unwrap(),
            d
        );
        assert!(digest_with(Kind::Plain, b"f", None, broken).is_ok());
    }
}
