//! The apply path of a file-writing resource: the probe, the backend step, the write,
//! and the state a stopped or failed apply returns.

use super::*;
use crate::fault_point;
use crate::plugin::stop;
use crate::resources::file_digest::KeySource;

impl<R: FileResource> ConfigFile<R> {
    /// Writes `content` (the file, or the block) and returns its digest (`previous`, the
    /// prior state's digest, when it is an earlier version's digest of this content).
    async fn write(
        &self,
        path: &str,
        content: &str,
        previous: Option<&str>,
    ) -> Result<String, Diagnostics> {
        let services = self.data.services()?;
        let what = R::SPEC.what;
        // The digest first: when it cannot be had (no key could be made, say), nothing
        // is written.
        let digest = file_digest::digest(
            Self::kind(),
            content.as_bytes(),
            previous,
            &self.keys(Some(path)),
        )
        .await
        .map_err(|e| digest_error(path, e))?;
        let _turn = managed_block::lock(path).await;
        let found = self.file(path).await?;
        // The file as CircleCI had it, kept before the cutover's first write of it.
        crate::resources::cutover::keep_original(
            &self.data,
            &services,
            path,
            found.as_ref().map(|(b, m)| (b.as_slice(), *m)),
        )
        .await?;
        let current = found.map(|(b, _)| b).unwrap_or_default();
        let bytes = managed_block::upsert(&current, R::SPEC.type_name, content)
            .map_err(|e| block_error(path, e))?;
        services
            .write_file(path, &bytes, 0o600)
            .await
            .map_err(|e| ssh_diag(&format!("Could not write the {what} block of {path}"), e))?;
        log::info!(
            "wrote the {what} block of {path} ({} bytes in the file)",
            bytes.len()
        );
        Ok(digest)
    }

    /// Removes the block; the file too when nothing else is in it.
    pub(super) async fn remove(&self, path: &str) -> Result<(), Diagnostics> {
        let services = self.data.services()?;
        let what = R::SPEC.what;
        let fail = |e| ssh_diag(&format!("Could not remove the {what} block of {path}"), e);
        let _turn = managed_block::lock(path).await;
        let Some((bytes, mode)) = self.file(path).await? else {
            return Ok(());
        };
        let next =
            managed_block::remove(&bytes, R::SPEC.type_name).map_err(|e| block_error(path, e))?;
        if next == bytes {
            // No block of ours (e.g. the file is back as the operator wrote it):
            // nothing changes, nothing is kept.
            return Ok(());
        }
        crate::resources::cutover::keep_original(
            &self.data,
            &services,
            path,
            Some((bytes.as_slice(), mode)),
        )
        .await?;
        if next.is_empty() {
            services.remove_file(path).await.map_err(fail)?;
            log::info!("deleted {path}: the {what} block was all it held");
        } else {
            services.write_file(path, &next, mode).await.map_err(fail)?;
            log::info!("removed the {what} block from {path}; the rest of the file is kept");
        }
        Ok(())
    }

    /// The common attributes of a state this apply returns.
    fn finish_state(&self, state: &mut Value, path: &str) {
        FileAttrs::put_one(state, |f| {
            f.id = Known::Value(path.to_string());
            f.config_path = Known::Value(path.to_string());
            f.drift = Known::Value(String::new());
        });
    }

    /// The state of an apply that changed something on the backend side but did not
    /// write the file: unknowns filled from the prior state, and a `file_sha256` that
    /// makes the next plan write the file.
    fn unwritten(&self, mut state: Value, c: Change<'_>, path: &str, why: &str) -> Value {
        settle(&mut state, c.prior);
        self.finish_state(&mut state, path);
        FileAttrs::put_one(&mut state, |f| {
            f.file_sha256 = Known::Value(NOT_WRITTEN.to_string());
            f.drift = Known::Value(format!("{path} was not written: {why}"));
        });
        state
    }

    pub(super) async fn apply(&self, c: Change<'_>) -> Applied {
        let path = self.path_of(c.planned);
        let (what, type_name) = (R::SPEC.what, R::SPEC.type_name);
        // Nothing changes on a backend when the file could not be written anyway.
        let services = match self.data.services() {
            Ok(s) => s,
            Err(d) => return Applied::from_result(Err(d)),
        };
        if let Err(e) = services.check_writable(&path).await {
            let d = ssh_diag(
                &format!("Cannot write the {what} file: nothing was changed"),
                e,
            );
            return Applied::from_result(Err(d));
        }
        // The digest key too, before the backend changes: without it the file could
        // not be recorded, and a password changed on the server would not reach it.
        if Self::kind() == Kind::Secret {
            if let Err(e) = self.keys(Some(&path)).find_or_make().await {
                let d = Diagnostic::error(
                    format!("Cannot record the {what} file's digest: nothing was changed"),
                    format!("{path}: {e}"),
                );
                return Applied::from_result(Err(d.into()));
            }
        }
        if stop::requested() {
            return Applied::from_result(Err(stopped_before()));
        }
        fault_point::point(&format!("{type_name}.before_backend")).await;
        let prepared = match self.inner.prepare(c).await {
            Ok(p) => p,
            Err(Halted { state: None, diags }) => return Applied::from_result(Err(diags)),
            Err(Halted {
                state: Some(st),
                diags,
            }) => {
                let st = self.unwritten(st, c, &path, "the apply stopped before it");
                return Applied {
                    state: Some(st),
                    diags,
                };
            }
        };
        fault_point::point(&format!("{type_name}.after_backend")).await;
        let mut state = prepared.state;
        let written = match &prepared.content {
            Some(content) => {
                let previous = c.prior.and_then(|p| FileAttrs::of(p).ok());
                let previous = previous.as_ref().and_then(FileAttrs::digest);
                self.write(&path, content, previous).await.map(Some)
            }
            None => Ok(None),
        };
        let after = self
            .inner
            .finish(
                prepared.pending,
                c,
                &mut state,
                written.as_ref().map(|_| ()),
            )
            .await;
        let mut diags = Diagnostics::new();
        match written {
            Err(d) => {
                diags.extend(d);
                diags.extend(after);
                let Some(changes) = R::SPEC.changes else {
                    return Applied::from_result(Err(diags));
                };
                diags.push(Diagnostic::error(
                    "Changed, but the file was not written",
                    format!(
                        "{changes} were already changed when writing {path} failed (above). The state \
                         records the change; the next terraform apply writes the file."
                    ),
                ));
                let st = self.unwritten(state, c, &path, "the write failed");
                return Applied {
                    state: Some(st),
                    diags,
                };
            }
            Ok(Some(hash)) => {
                FileAttrs::put_one(&mut state, |f| f.file_sha256 = Known::Value(hash))
            }
            Ok(None) => {}
        }
        diags.extend(after);
        self.finish_state(&mut state, &path);
        Applied {
            state: Some(state),
            diags,
        }
    }
}

/// Fills the unknown attributes of `state` from `prior` (null where there is none):
/// a state returned after a partial apply must be fully known.
fn settle(state: &mut Value, prior: Option<&Value>) {
    let Value::Map(m) = state else { return };
    for (k, v) in m.iter_mut() {
        if !v.is_fully_known() {
            *v = prior
                .map(|p| p.get(k).clone())
                .filter(Value::is_fully_known)
                .unwrap_or(Value::Null);
        }
    }
}

/// The stop notice when nothing was changed yet.
fn stopped_before() -> Diagnostics {
    Diagnostic::error(
        "Stopped",
        "Terraform asked the provider to stop before this resource changed anything; run terraform apply \
         again.",
    )
    .into()
}
