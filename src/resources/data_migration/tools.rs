//! The restore's client tools: a second temporary container of `restore_image` (the
//! target's release by default) next to the embedded one, so that the dumps go in with
//! tools that can log in to the target and speak its protocol. Its image is chosen and
//! checked at plan when the target answers, and checked again before the stop from
//! what the tools themselves say they are, with a login to the target (PostgreSQL).

use std::time::Duration;

use super::container::Container;
use super::embedded_postgres::{password_line, CA_MOUNT, STATS_ON_TARGET};
use super::settings::{MongoSettings, PgSettings};
use super::*;
use crate::backends::ssh::ServicesHost;
use crate::circleci::restore_tools::{self as rt, PgTarget};

/// The restore's container of the check before the stop (one at a time: PostgreSQL's,
/// then MongoDB's), named with the prefix every check for leftover migration
/// containers looks for; during the migration each embedded container's is named
/// after it (`circleci-data-migration-postgres-restore`).
pub(super) const CONTAINER: &str = "circleci-data-migration-restore";

/// How long the restore's container may take to answer once started (the image is
/// pulled by `docker run` before, within the command deadline).
const READY_WITHIN: Duration = Duration::from_secs(30);

const ATTR: &str = "restore_image";

/// Starts the restore's container `name` of `image` with `mounts`, idle (`sleep
/// infinity`) until the migration runs its tools in it, and waits until `tool
/// --version` answers.
pub(super) async fn start<'a>(
    h: &'a ServicesHost,
    name: &str,
    image: &str,
    mounts: &[String],
    deadline: Duration,
    tool: &str,
) -> Result<Container<'a>, Diagnostics> {
    let what = "the restore's tools";
    let c = Container::run(
        h,
        (name, image, &["sleep", "infinity"]),
        mounts,
        deadline,
        what,
    )
    .await?;
    c.wait_ready(
        &["exec", name, tool, "--version"],
        READY_WITHIN,
        what,
        image,
    )
    .await
}

/// Waits for the embedded server (`embedded`: its container runs, this waits until it
/// answers) while the restore's container starts beside it (`tools`): the two take
/// about a second each after CircleCI's stop, and nothing of the one needs the other.
/// When either fails, the other is removed too (each removes itself on its own
/// failure), and every error is returned.
pub(super) async fn beside<'a>(
    embedded: impl std::future::Future<Output = Result<Container<'a>, Diagnostics>>,
    tools: impl std::future::Future<Output = Result<Container<'a>, Diagnostics>>,
) -> Result<(Container<'a>, Container<'a>), Diagnostics> {
    match tokio::join!(embedded, tools) {
        (Ok(c), Ok(t)) => Ok((c, t)),
        (Ok(c), Err(d)) => {
            c.stop().await;
            Err(d)
        }
        (Err(d), Ok(t)) => {
            t.stop().await;
            Err(d)
        }
        (Err(mut d), Err(e)) => {
            d.extend(e);
            Err(d)
        }
    }
}

/// The refusal of `image` for the target, on `block.restore_image`.
fn refused(block: &str, image: &str, target: &str, why: &str, when: &str) -> Diagnostic {
    Diagnostic::error(
        "The restore's tools cannot handle the target",
        format!("{block}.restore_image {image:?} cannot restore into {target}: {why}. {when}"),
    )
    .at(AttrPath::root(block).attr(ATTR))
}

/// A failure to start the restore's container before the stop: `docker run` refused
/// (an image that cannot be pulled) or the tool never answered (an image without it)
/// is on `block.restore_image`; anything else (the Services machine lost) is not.
fn on_attr(d: Diagnostics, block: &str, when: &str) -> Diagnostics {
    let mut out = Diagnostics::new();
    for mut x in d.0 {
        x.detail = format!("{} {when}", x.detail);
        let image = x.summary.starts_with("Could not start the restore's tools")
            || x.summary.starts_with("The restore's tools did not start");
        out.push(match x.path {
            None if image => x.at(AttrPath::root(block).attr(ATTR)),
            _ => x,
        });
    }
    out
}

/// What the plan knows of the PostgreSQL target: its release and whether it uses SCRAM;
/// none when it does not answer now.
async fn pg_target(data: &ProviderData) -> Option<(PgTarget, String, i32)> {
    let admin = data.postgres().ok()?;
    let info = admin.server_info().await.ok()?;
    let t = PgTarget {
        release: rt::pg_release(info.version_num),
        scram: info.password_encryption == "scram-sha-256",
    };
    let name = format!("PostgreSQL {} at {}", info.version, admin.target());
    Some((t, name, info.version_num))
}

/// The MongoDB target's wire version and how to name it.
async fn mongo_target(data: &ProviderData) -> Option<(i32, String)> {
    let admin = data.mongo().ok()?;
    let wire = admin.wire_version().await.ok()?;
    Some((
        wire,
        format!(
            "MongoDB {} at {}",
            crate::backends::mongo::release_of(wire),
            admin.hosts()
        ),
    ))
}

impl DataMigration {
    /// At plan, when the migration runs: each block's `restore_image` defaulted from
    /// the target's release (unknown when the target does not answer now), or the
    /// configured one checked against it when its tag names a release. Otherwise the
    /// state's value stays.
    pub(super) async fn plan_restore_images(
        &self,
        planned: &mut Value,
        config: &Value,
        prior: &Value,
        migrate: bool,
        diags: &mut Diagnostics,
    ) {
        let (Ok(mut parts), Ok(given)) =
            (PartsAtPlan::decode(planned), PartsAtPlan::decode(config))
        else {
            return;
        };
        // Null on create.
        let before = PartsAtPlan::decode(prior).ok();
        let image = |b: Known<&Known<String>>| match b {
            Known::Value(i) => i.clone(),
            Known::Null | Known::Unknown => Known::Null,
        };
        if let Known::Value(b) = &mut parts.postgres {
            let configured = image(known_map(&given.postgres, |c| &c.restore_image));
            let prior = before.as_ref().map_or(Known::Null, |p| {
                image(known_map(&p.postgres, |c| &c.restore_image))
            });
            self.plan_image(
                POSTGRES,
                &mut b.restore_image,
                configured,
                prior,
                migrate,
                diags,
            )
            .await;
        }
        if let Known::Value(b) = &mut parts.mongo {
            let configured = image(known_map(&given.mongo, |c| &c.restore_image));
            let prior = before.as_ref().map_or(Known::Null, |p| {
                image(known_map(&p.mongo, |c| &c.restore_image))
            });
            self.plan_image(
                MONGO,
                &mut b.restore_image,
                configured,
                prior,
                migrate,
                diags,
            )
            .await;
        }
        parts.encode(planned);
    }

    /// `block.restore_image` at plan: the configured one checked (when the migration
    /// runs) and kept; else the prior state's, or when the migration runs, the target's
    /// release (unknown when the target does not answer now).
    async fn plan_image(
        &self,
        block: &str,
        planned: &mut Known<String>,
        configured: Known<String>,
        prior: Known<String>,
        migrate: bool,
        diags: &mut Diagnostics,
    ) {
        if !configured.is_null() {
            if let (true, Known::Value(image)) = (migrate, &configured) {
                if let Some(d) = self.refusal_at_plan(block, image).await {
                    diags.push(d);
                }
            }
            return;
        }
        *planned = if !migrate {
            prior
        } else if block == POSTGRES {
            pg_target(&self.data)
                .await
                .map_or(Known::Unknown, |(_, _, n)| {
                    Known::Value(rt::default_pg_image(n))
                })
        } else {
            mongo_target(&self.data)
                .await
                .map_or(Known::Unknown, |(w, _)| {
                    Known::Value(rt::default_mongo_image(w))
                })
        };
    }

    async fn refusal_at_plan(&self, block: &str, image: &str) -> Option<Diagnostic> {
        let when = "Nothing was stopped or changed; the default (leave restore_image out) is the \
                    target's own release.";
        if block == POSTGRES {
            let tools = rt::pg_image_release(image)?;
            let (t, name, _) = pg_target(&self.data).await?;
            if let Some(why) = rt::pg_refusal(tools, t) {
                return Some(refused(block, image, &name, &why, when));
            }
            let why = rt::pg_caution(tools, t)?;
            Some(
                Diagnostic::warning(
                    "The restore's tools are newer than the target",
                    format!("{block}.restore_image {image:?} for {name}: {why}."),
                )
                .at(AttrPath::root(block).attr(ATTR)),
            )
        } else {
            let tools = rt::mongo_image_tools(rt::mongo_image_release(image)?);
            let (wire, name) = mongo_target(&self.data).await?;
            let why = rt::mongo_refusal(tools, wire, &name)?;
            Some(refused(block, image, &name, &why, when))
        }
    }

    /// Before the stop: each block's restore image resolved (the target's release when
    /// the plan could not read it) and started once with the CA mounted; the tools'
    /// own version checked against the target; for PostgreSQL, a login to the first
    /// target database through them, which reads its `integer_datetimes` (the
    /// server the checksums will run on, as the Services machine reaches it). The
    /// resolved images and that setting go into the settings.
    pub(super) async fn check_restore_tools(
        &self,
        (postgres, mongo): (Option<&mut PgSettings>, Option<&mut MongoSettings>),
        deadline: Duration,
    ) -> Result<(), Diagnostics> {
        let h = self.data.services()?;
        let when = "Nothing was stopped or changed.";
        if let Some(p) = postgres {
            let Some((t, name, num)) = pg_target(&self.data).await else {
                return Err(Diagnostic::error(
                    "External PostgreSQL refused",
                    format!("its version could not be read for the restore's tools. {when}"),
                )
                .into());
            };
            if p.restore_image.is_empty() {
                p.restore_image = rt::default_pg_image(num);
            }
            let image = p.restore_image.clone();
            let mounts: Vec<String> = p
                .ca_file
                .iter()
                .map(|ca| format!("{ca}:{CA_MOUNT}:ro"))
                .collect();
            let c = start(&h, CONTAINER, &image, &mounts, deadline, "pg_restore")
                .await
                .map_err(|d| on_attr(d, POSTGRES, when))?;
            let r = async {
                let (_, out) = c
                    .exec(
                        &["pg_restore", "--version"],
                        None,
                        "Could not run pg_restore",
                    )
                    .await?;
                let text = out.stdout_text();
                let tools = rt::parse_pg_tools(&text).ok_or_else(|| {
                    refused(
                        POSTGRES,
                        &image,
                        &name,
                        &format!("`pg_restore --version` printed {text:?}"),
                        when,
                    )
                })?;
                if let Some(why) = rt::pg_refusal(tools, t) {
                    return Err(refused(POSTGRES, &image, &name, &why, when).into());
                }
                let target = p.target();
                let port = p.port.to_string();
                let db = p.databases.first().map_or("postgres", String::as_str);
                let args = [
                    "bash",
                    "-c",
                    STATS_ON_TARGET,
                    "target",
                    &p.host,
                    &port,
                    &p.user,
                    db,
                    &p.sslmode,
                    "\t",
                    "SELECT current_setting('integer_datetimes')",
                ];
                let mut all = vec!["exec", "-i", CONTAINER];
                all.extend_from_slice(&args);
                let (_, out) = c.docker(&all, Some(&password_line(&target)?)).await?;
                if !out.success() {
                    let why = format!(
                        "its psql could not log in as {:?} from the Services machine:\n{}",
                        p.user,
                        out.evidence()
                    );
                    return Err(refused(POSTGRES, &image, &name, &why, when).into());
                }
                // What the login printed: the target's integer_datetimes, which
                // decides how the checksums hash timestamps (anything else: text).
                let integer_datetimes = out.stdout_text().trim() == "on";
                log::info!(
                    "restore tools {image}: pg_restore {} logs in to {name} (integer_datetimes {integer_datetimes})",
                    rt::pg_name(tools)
                );
                Ok::<bool, Diagnostics>(integer_datetimes)
            }
            .await;
            c.stop().await;
            p.target_integer_datetimes = r?;
        }
        if let Some(m) = mongo {
            let Some((wire, name)) = mongo_target(&self.data).await else {
                return Err(Diagnostic::error(
                    "External MongoDB refused",
                    format!("its version could not be read for the restore's tools. {when}"),
                )
                .into());
            };
            if m.restore_image.is_empty() {
                m.restore_image = rt::default_mongo_image(wire);
            }
            let image = m.restore_image.clone();
            // Only the tools' version is checked here: nothing to mount.
            let c = start(&h, CONTAINER, &image, &[], deadline, "mongorestore")
                .await
                .map_err(|d| on_attr(d, MONGO, when))?;
            let r = async {
                let (_, out) = c
                    .exec(
                        &["mongorestore", "--version"],
                        None,
                        "Could not run mongorestore",
                    )
                    .await?;
                // The legacy tools print their version on standard error.
                let text = format!(
                    "{}\n{}",
                    out.stdout_text(),
                    String::from_utf8_lossy(&out.stderr)
                );
                let tools = rt::parse_mongo_tools(&text).ok_or_else(|| {
                    refused(
                        MONGO,
                        &image,
                        &name,
                        &format!("`mongorestore --version` printed {:?}", text.trim()),
                        when,
                    )
                })?;
                if let Some(why) = rt::mongo_refusal(tools, wire, &name) {
                    return Err(refused(MONGO, &image, &name, &why, when).into());
                }
                log::info!("restore tools {image}: {tools} for {name}");
                Ok::<(), Diagnostics>(())
            }
            .await;
            c.stop().await;
            r?;
        }
        Ok(())
    }
}
