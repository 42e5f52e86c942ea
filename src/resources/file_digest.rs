//! What the state keeps about a written file, so refresh can tell it changed. A file
//! without secrets gets its plain SHA-256. A file that holds a password or token gets a
//! salted, slow digest instead: PBKDF2-HMAC-SHA256, 600,000 iterations (OWASP's figure for it), a 16-byte
//! random salt kept in the value (`pbkdf2-sha256$600000$SALT$DIGEST`). Everything else
//! in such a file is known to whoever reads the state, so a plain hash would let them
//! test password guesses offline at SHA-256 speed; this makes every guess cost 600,000
//! HMAC rounds. The salt is reused while the state has one, so an unchanged file keeps
//! its digest and plans stay empty.

use aws_lc_rs::{pbkdf2, rand::SecureRandom};
use base64::Engine;

const SCHEME: &str = "pbkdf2-sha256";
const ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;

/// Whether a file holds a secret.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
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
    (iterations > 0 && !salt.is_empty()).then_some((iterations, salt))
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

/// The digest to store for `content`. A salted one reuses the salt of `previous` (the
/// digest in the prior state), or draws a new one.
pub fn digest(kind: Kind, content: &[u8], previous: Option<&str>) -> String {
    match kind {
        Kind::Plain => super::file_sha256(content),
        Kind::Salted => {
            let (iterations, salt) = previous.and_then(params).unwrap_or_else(|| {
                let mut salt = vec![0u8; SALT_LEN];
                // Without randomness a fixed salt is still per-file slow; never a panic.
                let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut salt);
                (ITERATIONS, salt)
            });
            salted(content, iterations, &salt)
        }
    }
}

/// The digest a plan can show: `None` when it depends on a salt not drawn yet.
pub fn planned(kind: Kind, content: &[u8], previous: Option<&str>) -> Option<String> {
    match kind {
        Kind::Plain => Some(super::file_sha256(content)),
        Kind::Salted => previous
            .and_then(params)
            .map(|(i, salt)| salted(content, i, &salt)),
    }
}

/// The digest of the file as it is now, comparable with `stored` (the state's): with
/// its salt, or plain when the state holds a plain hash (written before this scheme).
pub fn current(kind: Kind, content: &[u8], stored: Option<&str>) -> String {
    match (kind, stored.and_then(params)) {
        (Kind::Salted, Some((i, salt))) => salted(content, i, &salt),
        (Kind::Salted, None) if stored.is_none_or(str::is_empty) => digest(kind, content, None),
        _ => super::file_sha256(content),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salted_digests_keep_their_salt_and_hide_the_plain_hash() {
        let file = b"export RABBITMQ_PASSWORD=\"hunter2\"\n";
        let d1 = digest(Kind::Salted, file, None);
        assert!(d1.starts_with("pbkdf2-sha256$600000$"), "{d1}");
        assert!(!d1.contains(&crate::resources::file_sha256(file)));
        // The same salt: the same digest, for the plan and for refresh.
        assert_eq!(digest(Kind::Salted, file, Some(&d1)), d1);
        assert_eq!(
            planned(Kind::Salted, file, Some(&d1)).as_deref(),
            Some(d1.as_str())
        );
        assert_eq!(current(Kind::Salted, file, Some(&d1)), d1);
        // Another file: another digest; a new salt: another digest.
        assert_ne!(digest(Kind::Salted, b"other", Some(&d1)), d1);
        assert_ne!(digest(Kind::Salted, file, None), d1);
        // No salt yet: the plan cannot know it.
        assert_eq!(planned(Kind::Salted, file, None), None);
        // Files without secrets keep the plain SHA-256.
        assert_eq!(
            digest(Kind::Plain, b"abc", None),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // A state from before compares as plain.
        let old = crate::resources::file_sha256(file);
        assert_eq!(current(Kind::Salted, file, Some(&old)), old);
    }
}
