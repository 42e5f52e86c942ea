//! The transit key backup and restore the data migration carries the `context-service`
//! key over with, against OpenBao: a ciphertext made by the source key decrypts with
//! the restored key; the backup is refused until the key allows it, and stays out of
//! Debug output.

use crate::common;

use std::time::Duration;

use terraform_provider_circleci::testing::vault::{Vault, VaultConfig};
use terraform_provider_circleci::testing::Secret;

fn vault(s: &common::Servers) -> Vault {
    Vault::new(VaultConfig {
        address: s.get("CIRCLECI_TEST_VAULT_ADDR").into(),
        token: Secret::new(s.get("CIRCLECI_TEST_VAULT_TOKEN")),
        ca_cert_file: Some(s.get("CIRCLECI_TEST_VAULT_CA").into()),
        namespace: None,
        skip_tls_verify: false,
        timeout: Duration::from_secs(10),
        route: Default::default(),
    })
}

#[tokio::test]
async fn a_restored_key_decrypts_what_the_source_encrypted() {
    let s = common::servers();
    let v = vault(&s);
    let n = std::process::id();
    // The target is another transit mount, standing for the external Vault.
    let (key, target) = (format!("backup-key-{n}"), format!("transit-target-{n}"));
    s.bao_ok(&["secrets", "enable", &format!("-path={target}"), "transit"]);
    v.create_key("transit", &key, "aes256-gcm96").await.unwrap();
    let secret = b"a context secret: hunter2";
    let ct = v.encrypt("transit", &key, secret).await.unwrap();
    assert!(ct.starts_with("vault:v1:"), "{ct}");

    // Vault refuses a backup until the key is exportable with plaintext backup allowed.
    let e = v.backup_key("transit", &key).await.unwrap_err();
    assert!(e.to_string().contains("backing up transit key"), "{e}");
    v.allow_backup("transit", &key).await.unwrap();
    let backup = v.backup_key("transit", &key).await.unwrap();
    assert!(!format!("{backup:?}").contains(backup.expose()));

    v.restore_key(&target, &key, &backup, false).await.unwrap();
    assert_eq!(v.decrypt(&target, &key, &ct).await.unwrap(), secret);
    // Restoring over an existing key needs force.
    assert!(v.restore_key(&target, &key, &backup, false).await.is_err());
    v.restore_key(&target, &key, &backup, true).await.unwrap();
    assert_eq!(v.decrypt(&target, &key, &ct).await.unwrap(), secret);
    // And what the target encrypts, the source decrypts: the same key.
    let back = v.encrypt(&target, &key, b"both ways").await.unwrap();
    assert_eq!(
        v.decrypt("transit", &key, &back).await.unwrap(),
        b"both ways"
    );

    v.delete_key("transit", &key).await.unwrap();
    s.bao_ok(&["secrets", "disable", &target]);
}
