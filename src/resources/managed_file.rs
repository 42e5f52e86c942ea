//! The config file each resource owns on the Services machine: write (0600, atomic),
//! read back, import, delete, with diagnostics that say which file and what failed.

use super::{file_sha256, ssh_diag, validate};
use crate::plugin::{AttrPath, Diagnostic, Diagnostics};
use crate::provider::ProviderData;

/// Writes `content` to `path` (mode 0600) and returns its SHA-256.
pub async fn write(
    data: &ProviderData,
    path: &str,
    content: &str,
    what: &str,
) -> Result<String, Diagnostics> {
    data.services()?
        .write_file(path, content.as_bytes(), 0o600)
        .await
        .map_err(|e| ssh_diag(&format!("Could not write the {what} config file"), e))?;
    log::info!("wrote {path} ({} bytes)", content.len());
    Ok(file_sha256(content.as_bytes()))
}

/// The file's bytes, or None when it is gone.
pub async fn read(
    data: &ProviderData,
    path: &str,
    what: &str,
) -> Result<Option<Vec<u8>>, Diagnostics> {
    Ok(data
        .services()?
        .read_file(path)
        .await
        .map_err(|e| ssh_diag(&format!("Could not read the {what} config file"), e))?
        .map(|f| f.content))
}

pub async fn remove(data: &ProviderData, path: &str, what: &str) -> Result<(), Diagnostics> {
    let existed = data
        .services()?
        .remove_file(path)
        .await
        .map_err(|e| ssh_diag(&format!("Could not delete the {what} config file"), e))?;
    log::info!("deleted {path} (existed: {existed})");
    Ok(())
}

/// Import: the ID must be an absolute path to an existing UTF-8 file; returns its text
/// and hash.
pub async fn read_for_import(
    data: &ProviderData,
    id: &str,
    example: &str,
    what: &str,
) -> Result<(String, String), Diagnostics> {
    let mut diags = Diagnostics::new();
    validate::remote_path(id, AttrPath::root("config_path"), &mut diags);
    if diags.has_errors() {
        return Err(Diagnostic::error(
            "Invalid import ID",
            format!("the import ID is the config file's absolute path, e.g. {example}; got {id:?}"),
        )
        .into());
    }
    let services = data.services()?;
    let content = read(data, id, what).await?.ok_or_else(|| {
        Diagnostics::from(Diagnostic::error(
            "Nothing to import",
            format!("there is no file {id} on {}", services.config().target()),
        ))
    })?;
    let hash = file_sha256(&content);
    let text = String::from_utf8(content).map_err(|_| {
        Diagnostics::from(Diagnostic::error(
            "Cannot import this file",
            format!("{id} is not UTF-8 text"),
        ))
    })?;
    Ok((text, hash))
}
