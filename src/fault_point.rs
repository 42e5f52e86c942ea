//! Named points in the apply steps where the fault suite (`tests/faults.rs`) injects a
//! fault at a known moment. Inert unless `CIRCLECI_PROVIDER_FAULT_DIR` is set in the
//! provider's environment, which only the tests do.
//!
//! With it set to a directory DIR, a point `P` is *armed* by creating `DIR/P.armed`.
//! An apply reaching an armed point removes `P.armed`, creates `DIR/P.reached`, and
//! waits until `DIR/P.go` exists, Terraform asks the provider to stop, or two minutes
//! pass, whichever comes first. Unarmed points cost one `stat`.
//!
//! A point checked with [`failure`] instead *fails* the step when `DIR/P.fail` exists:
//! the file is removed and its text becomes the step's error, as a real failure there
//! would end it (the tests use it where no server can be made to fail on cue).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The environment variable naming the directory.
pub(crate) const ENV: &str = "CIRCLECI_PROVIDER_FAULT_DIR";

/// The longest a point holds an apply.
const HOLD: Duration = Duration::from_secs(120);

fn dir() -> Option<&'static PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::var_os(ENV)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    })
    .as_ref()
}

/// Point `name` (`<resource type>.<phase>`) of an apply step.
pub(crate) async fn point(name: &str) {
    let Some(dir) = dir() else { return };
    let armed = dir.join(format!("{name}.armed"));
    if std::fs::remove_file(&armed).is_err() {
        return;
    }
    log::warn!(
        "fault point {name}: holding until {name}.go appears in {}",
        dir.display()
    );
    let _ = std::fs::write(dir.join(format!("{name}.reached")), b"");
    let go = dir.join(format!("{name}.go"));
    let until = Instant::now() + HOLD;
    while !go.exists() && Instant::now() < until {
        if crate::plugin::stop::or_stop(tokio::time::sleep(Duration::from_millis(50)))
            .await
            .is_none()
        {
            break;
        }
    }
    log::warn!("fault point {name}: released");
}

/// Point `name`, where the fault suite can make the step fail: the injected failure's
/// text, once, when `DIR/name.fail` exists.
pub(crate) fn failure(name: &str) -> Option<String> {
    let dir = dir()?;
    let path = dir.join(format!("{name}.fail"));
    let text = std::fs::read_to_string(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    log::warn!("fault point {name}: failing as injected");
    Some(format!("injected failure at {name}: {}", text.trim()))
}
