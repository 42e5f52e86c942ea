//! Managed blocks at the byte level: every file the provider writes on the Services
//! machine holds its settings between `# BEGIN terraform-provider-circleci <id>` and
//! `# END …` lines, and every other byte of the file is the operator's and is kept as it
//! is, bytes that are not UTF-8 included. The block functions of `circleci::envfile`
//! work on text; here each byte is mapped to the character of the same number (Latin-1)
//! and back, a one-to-one mapping, so they see only ASCII markers and newlines and never
//! change a byte they do not own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::circleci::envfile::{self, EnvFileError};

fn to_chars(b: &[u8]) -> String {
    b.iter().map(|&x| char::from(x)).collect()
}

fn to_bytes(s: &str) -> Vec<u8> {
    // Every char came from one byte, so each fits in one again.
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

/// `file` with block `id` set to `content` (appended when missing).
pub(crate) fn upsert(file: &[u8], id: &str, content: &str) -> Result<Vec<u8>, EnvFileError> {
    envfile::upsert_block(&to_chars(file), id, &to_chars(content.as_bytes())).map(|s| to_bytes(&s))
}

/// The block's bytes, when the file has it.
pub(crate) fn extract(file: &[u8], id: &str) -> Result<Option<Vec<u8>>, EnvFileError> {
    Ok(envfile::extract_block(&to_chars(file), id)?.map(|s| to_bytes(&s)))
}

/// `file` without block `id`.
pub(crate) fn remove(file: &[u8], id: &str) -> Result<Vec<u8>, EnvFileError> {
    envfile::remove_block(&to_chars(file), id).map(|s| to_bytes(&s))
}

/// One lock per file path: resources writing the same file in one run take turns, so
/// no read-modify-write loses another's block.
pub(crate) async fn lock(path: &str) -> tokio::sync::OwnedMutexGuard<()> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let m = {
        let mut all = LOCKS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        all.entry(path.to_string()).or_default().clone()
    };
    m.lock_owned().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_outside_the_block_are_kept_as_they_are() {
        let operator: &[u8] = b"# mine\nexport A=\xff\xfe latin-1 \xe9\n\x00binary\r\n";
        let with = upsert(operator, "t", "export X=\"\u{fc}\"\n").unwrap();
        assert!(with.starts_with(operator));
        let block = extract(&with, "t").unwrap().unwrap();
        assert_eq!(String::from_utf8(block).unwrap(), "export X=\"\u{fc}\"\n");
        let changed = upsert(&with, "t", "export X=2\n").unwrap();
        assert!(changed.starts_with(operator));
        assert_eq!(remove(&changed, "t").unwrap(), operator);
        // A file that was only the block becomes empty.
        assert!(remove(&upsert(b"", "t", "export X=1\n").unwrap(), "t")
            .unwrap()
            .is_empty());
        assert_eq!(extract(operator, "t").unwrap(), None);
    }

    #[tokio::test]
    async fn one_path_one_writer_at_a_time() {
        let g = lock("/etc/x").await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), lock("/etc/x"))
                .await
                .is_err()
        );
        let _other = lock("/etc/y").await;
        drop(g);
        let _again = lock("/etc/x").await;
    }
}
