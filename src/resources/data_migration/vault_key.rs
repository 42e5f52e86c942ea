//! Moving the embedded Vault's transit key (CircleCI's contexts are encrypted with
//! `context-service`) to the external Vault with Vault's own backup and restore: the
//! source key is marked exportable with plaintext backups allowed (Vault never lets
//! either be undone), backed up, and restored under the same name. Verified by a
//! ciphertext of the source key decrypting on the target.

use std::sync::Arc;

use crate::backends::vault::{Vault, VaultError};
use crate::plugin::{AttrPath, Diagnostic, Diagnostics};

/// The block's name in the resource.
pub(crate) const BLOCK: &str = "vault_transit_key";

/// One key's move.
pub(crate) struct KeyMove {
    pub source: Vault,
    pub target: Arc<Vault>,
    pub source_mount: String,
    pub target_mount: String,
    pub key: String,
}

/// What the target holds under the key's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No such key (or no such mount).
    Absent,
    /// A key that decrypts what the source key encrypts: this key, moved before.
    Same,
    /// Another key of that name.
    Different,
}

fn diag(summary: &str, e: VaultError) -> Diagnostics {
    Diagnostic::error(summary, crate::backends::chain(&e)).into()
}

/// Fills a buffer with random bytes: the system's generator, or a test's.
type Fill = fn(&mut [u8]) -> Result<(), aws_lc_rs::error::Unspecified>;

/// 24 random bytes, encrypted with the source key and decrypted on the target.
fn probe_from(fill: Fill) -> Result<Vec<u8>, Diagnostics> {
    let mut p = vec![0u8; 24];
    fill(&mut p).map_err(|_| {
        Diagnostic::error(
            "Could not check the transit key",
            "the system's random number generator failed, so no probe could be made to \
             encrypt with the source key and decrypt on the target",
        )
    })?;
    Ok(p)
}

impl KeyMove {
    /// Does a ciphertext of the source key decrypt on the target, to the same bytes?
    async fn decrypts_on_target(&self) -> Result<bool, Diagnostics> {
        let probe = probe_from(aws_lc_rs::rand::fill)?;
        let ct = self
            .source
            .encrypt(&self.source_mount, &self.key, &probe)
            .await
            .map_err(|e| diag("Could not encrypt with the source key", e))?;
        Ok(matches!(
            self.target.decrypt(&self.target_mount, &self.key, &ct).await,
            Ok(p) if p == probe
        ))
    }

    /// Before anything changes: the source key is there; what the target holds.
    pub(crate) async fn preflight(&self) -> Result<Found, Diagnostics> {
        let exists = self
            .source
            .key_exists(&self.source_mount, &self.key)
            .await
            .map_err(|e| diag("Could not read the source Vault's transit key", e))?;
        if !exists {
            return Err(Diagnostic::error(
                "Transit key not found in the source Vault",
                format!(
                    "{} has no transit key {}/{}; CircleCI's contexts are encrypted with `context-service` in \
                     the mount `transit`. Nothing was changed.",
                    self.source.config().address,
                    self.source_mount,
                    self.key
                ),
            )
            .at(AttrPath::root(BLOCK).attr("key"))
            .into());
        }
        let on_target = self
            .target
            .mount_exists(&self.target_mount)
            .await
            .map_err(|e| diag("Could not read the external Vault", e))?
            && self
                .target
                .key_exists(&self.target_mount, &self.key)
                .await
                .map_err(|e| diag("Could not read the external Vault", e))?;
        if !on_target {
            return Ok(Found::Absent);
        }
        Ok(if self.decrypts_on_target().await? {
            Found::Same
        } else {
            Found::Different
        })
    }

    /// Backs the key up from the source and restores it on the target (`force`
    /// replaces a key of that name there), enabling the target's transit mount first
    /// when it is missing.
    pub(crate) async fn run(&self, force: bool) -> Result<(), Diagnostics> {
        let t = &self.target;
        let mounted = t
            .mount_exists(&self.target_mount)
            .await
            .map_err(|e| diag("Could not read the external Vault", e))?;
        if !mounted {
            t.enable_transit(&self.target_mount)
                .await
                .map_err(|e| diag("Could not enable transit on the external Vault", e))?;
        }
        self.source
            .allow_backup(&self.source_mount, &self.key)
            .await
            .map_err(|e| diag("Could not allow a backup of the source key", e))?;
        let backup = self
            .source
            .backup_key(&self.source_mount, &self.key)
            .await
            .map_err(|e| diag("Could not back up the source key", e))?;
        t.restore_key(&self.target_mount, &self.key, &backup, force)
            .await
            .map_err(|e| diag("Could not restore the key on the external Vault", e))?;
        log::info!(
            "transit key {}/{} restored into {} at {}",
            self.source_mount,
            self.key,
            self.target_mount,
            t.config().address
        );
        Ok(())
    }

    /// A fresh ciphertext of the source key decrypts on the target to the same bytes.
    pub(crate) async fn verify(&self) -> Result<(), Diagnostics> {
        if self.decrypts_on_target().await? {
            return Ok(());
        }
        Err(Diagnostic::error(
            "The moved transit key does not decrypt",
            format!(
                "a ciphertext of {}/{} at {} does not decrypt with {}/{} at {}",
                self.source_mount,
                self.key,
                self.source.config().address,
                self.target_mount,
                self.key,
                self.target.config().address
            ),
        )
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_random_generator_is_an_error() {
        let d = probe_from(|_| Err(aws_lc_rs::error::Unspecified)).unwrap_err();
        let text = format!("{d:?}");
        assert!(text.contains("random"), "{text}");
        let a = probe_from(aws_lc_rs::rand::fill).unwrap();
        assert_eq!(a.len(), 24);
        assert_ne!(a, probe_from(aws_lc_rs::rand::fill).unwrap());
    }
}
