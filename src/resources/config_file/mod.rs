//! The lifecycle every resource that writes a config file on the Services machine
//! shares. A resource supplies what is its own (schema, inputs -> rendered settings,
//! the backend step, parse for import) by implementing [`FileResource`]; [`ConfigFile`]
//! turns that into a Terraform [`Resource`]. Every file holds the provider's settings
//! as a managed block (`managed_block`): every other byte is the operator's and is kept.
//!
//! - **plan**: the resource's defaults, then `config_path` (default), `verify`
//!   (default `true`), `id = config_path`, `drift = ""` and `file_sha256` (the block's
//!   digest when every input is known, see `file_digest`); changing `config_path`
//!   replaces.
//! - **create / update**: the backend step (which may refuse and write nothing), then
//!   the block, the file replaced atomically with mode 0600; a resource may finish work
//!   after the write (or undo its step when the write failed).
//! - **read**: a block changed or removed out of band (or a missing file) is *drift*:
//!   named in the `drift` attribute, with `file_sha256` showing the difference (empty
//!   when the block is gone), so the next plan is an in-place update that writes it
//!   again. Refresh never drops the resource from the state because of its file: the
//!   backend objects it manages (roles, tokens, users) still exist.
//! - **delete**: the backend clean-up, then the block; the file too when nothing else
//!   is in it.
//! - **import** by the file's path: the block (or, for a file written by hand, the
//!   whole file) parsed, and the common attributes.

use std::sync::Arc;

use async_trait::async_trait;

use super::file_digest::{self, Kind};
use super::model::{self, Known, Model};
use super::{managed_block, ssh_diag, validate};
use crate::circleci::envfile;
use crate::circleci::versions::Supported;
use crate::plugin::{
    Applied, AttrPath, Attribute, Block, Diagnostic, Diagnostics, PlanRequest, Resource, Schema,
    Type, Value,
};
use crate::provider::ProviderData;

mod apply;

/// The static facts of one file-writing resource.
pub(crate) struct Spec {
    pub type_name: &'static str,
    /// What the resource does (Markdown), the schema's description.
    pub description: &'static str,
    /// What the file configures, for messages: "Redis" -> "the Redis config file".
    pub what: &'static str,
    /// The runbook's path, also the example in import errors.
    pub default_path: &'static str,
    /// How the default path is described in the docs (Markdown).
    pub default_path_doc: &'static str,
    /// What `verify` checks (Markdown, the whole description).
    pub verify_doc: &'static str,
    /// What refresh checks beyond the file, for the `drift` description.
    pub drift_doc: &'static str,
    /// The file holds a password or token: `file_sha256` is then a keyed digest under
    /// a key only the Services machine holds (see `file_digest`), never a plain hash.
    pub secret_in_file: bool,
    /// What the backend step changes before the file is written (for messages when the
    /// write then fails: "the role's password and the databases"), or `None` when it
    /// only checks. With `Some`, a failed write returns a state that records the
    /// change and plans the write again.
    pub changes: Option<&'static str>,
    /// The server the file points CircleCI at, when its version is checked against
    /// the compatibility table: the resource then has a computed `server_version`.
    pub compat: Option<Compat>,
}

/// The version check of the server a file points CircleCI at: read at plan when the
/// file will be written (and `verify` is on), so that the plan shows it and refuses a
/// server older than CircleCI's; read again by the apply's own check before anything
/// changes.
pub(crate) struct Compat {
    pub table: Supported,
    /// The attribute a refusal is attached to (the server's address), if any.
    pub attr: Option<&'static str>,
}

/// How long a plan waits for a server's version: a server not reachable yet (created
/// by the same apply, say) must not hold the plan for the provider's whole timeout.
pub(crate) const PLAN_READ: std::time::Duration = std::time::Duration::from_secs(10);

/// A server's version as its check read it, and where it runs ("10.0.0.5:6379").
pub(crate) struct Found {
    pub version: String,
    pub at: String,
}

/// `server_version` in the state an apply returns: what the apply's check read (empty
/// without a check) where the plan left it unknown; the plan's value where it knew
/// one, so that the result matches the plan (a server upgraded in between is still
/// checked, by the caller, and shows at the next write).
pub(crate) fn record_version(state: &mut Value, planned: &Value, read: Option<&str>) {
    if FileAttrs::of(planned).is_ok_and(|p| p.server_version.is_unknown()) {
        FileAttrs::put_one(state, |f| {
            f.server_version = Known::Value(read.unwrap_or_default().to_string());
        });
    }
}

impl Compat {
    /// The refusal of a server older than CircleCI's, naming where it runs and that
    /// nothing was written to `path`.
    pub(crate) fn refuse(&self, found: &Found, path: &str) -> Result<(), Diagnostics> {
        self.table.check(&found.version, &found.at).map_err(|e| {
            let d = Diagnostic::error(
                format!("{} too old for CircleCI Server 2.17", self.table.server),
                format!("{e}. Nothing was written to {path}."),
            );
            match self.attr {
                Some(a) => d.at(AttrPath::root(a)),
                None => d,
            }
            .into()
        })
    }
}

/// The file content known at plan time.
pub(crate) enum PlannedContent {
    /// Every input is known: the file will be exactly this.
    Known(String),
    /// Some input is not known yet.
    Unknown,
    /// The resource plans `file_sha256` itself.
    Keep,
}

impl PlannedContent {
    /// What `render` makes with the configured password, once it is known; the caller
    /// has checked the other inputs are. An input that does not render is left to
    /// apply to report.
    pub(crate) fn with_password<E>(
        config: &Value,
        render: impl FnOnce(&str) -> Result<String, E>,
    ) -> Self {
        match super::configured_password(config) {
            Some(pw) => render(pw.expose())
                .map(PlannedContent::Known)
                .unwrap_or(PlannedContent::Unknown),
            None => PlannedContent::Unknown,
        }
    }
}

/// One create or update: `prior` is `None` on create; `config` carries write-only values.
#[derive(Clone, Copy)]
pub(crate) struct Change<'a> {
    pub prior: Option<&'a Value>,
    pub planned: &'a Value,
    pub config: &'a Value,
}

impl Change<'_> {
    /// The attributes the core adds, as planned (their defaults set).
    pub(crate) fn common(&self) -> Result<Common, Diagnostics> {
        Common::of(self.planned).map_err(Diagnostics::from)
    }
}

/// The attributes every file resource has that its own code reads.
pub(crate) struct Common {
    /// Where the file is.
    pub config_path: String,
    /// Whether the backend step checks the server before the write.
    pub verify: bool,
}

impl Common {
    /// The common attributes of a planned value or a state.
    pub(crate) fn of(v: &Value) -> Result<Self, model::Undecoded> {
        Ok(Common {
            config_path: model::field(v, "config_path")?,
            verify: model::field(v, "verify")?,
        })
    }
}

/// The attributes the core adds to every file resource ([`schema_of`]), as a
/// configuration, a plan or a state holds them: each may be null or not known yet.
/// Read through [`FileAttrs::of`] and written back through [`FileAttrs::put`]: no other
/// code names them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FileAttrs {
    /// The file's path, as the resource's ID.
    pub id: Known<String>,
    /// Where the file is.
    pub config_path: Known<String>,
    /// Whether the apply checks the server before the write.
    pub verify: Known<bool>,
    /// The digest of the provider's block of the file.
    pub file_sha256: Known<String>,
    /// What refresh found different.
    pub drift: Known<String>,
    /// The server's version; only a resource with a version check
    /// ([`Spec::compat`]) has it, and it stays null for the others.
    pub server_version: Known<String>,
}

impl FileAttrs {
    /// Every attribute null: what an object that does not exist yet (the prior state
    /// of a create) holds.
    const NONE: FileAttrs = FileAttrs {
        id: Known::Null,
        config_path: Known::Null,
        verify: Known::Null,
        file_sha256: Known::Null,
        drift: Known::Null,
        server_version: Known::Null,
    };

    /// The common attributes of `v`; a null `v` (no prior state) has all of them null.
    pub(crate) fn of(v: &Value) -> Result<Self, model::Undecoded> {
        if v.is_null() {
            return Ok(Self::NONE);
        }
        Ok(FileAttrs {
            id: model::field_at_plan(v, "id")?,
            config_path: model::field_at_plan(v, "config_path")?,
            verify: model::field_at_plan(v, "verify")?,
            file_sha256: model::field_at_plan(v, "file_sha256")?,
            drift: model::field_at_plan(v, "drift")?,
            server_version: match model::field_at_plan(v, "server_version") {
                Err(model::Undecoded::NotInSchema(_)) => Known::Null,
                r => r?,
            },
        })
    }

    /// Sets every attribute on `v` (`server_version` only when it has a value).
    pub(crate) fn put(&self, v: &mut Value) {
        model::set_at_plan(v, "id", &self.id);
        model::set_at_plan(v, "config_path", &self.config_path);
        model::set_at_plan(v, "verify", &self.verify);
        model::set_at_plan(v, "file_sha256", &self.file_sha256);
        model::set_at_plan(v, "drift", &self.drift);
        if !self.server_version.is_null() {
            model::set_at_plan(v, "server_version", &self.server_version);
        }
    }

    /// Changes `v`'s common attributes with `f`. A `v` that does not decode (a defect:
    /// it is not this resource's object) is left as it is, and the defect is logged.
    pub(crate) fn put_one(v: &mut Value, f: impl FnOnce(&mut FileAttrs)) {
        match FileAttrs::of(v) {
            Ok(mut attrs) => {
                f(&mut attrs);
                attrs.put(v);
            }
            Err(e) => log::error!("provider defect: a file resource's object: {e}"),
        }
    }

    /// True when refresh found something different from the last apply.
    pub(crate) fn drifted(&self) -> bool {
        self.drift.value().is_some_and(|d| !d.is_empty())
    }

    /// The digest, when known and set.
    pub(crate) fn digest(&self) -> Option<&str> {
        self.file_sha256.value().map(String::as_str)
    }
}

/// One refresh of the backend side: `fresh` starts as a copy of `state`; push what
/// differs to `drift`.
pub(crate) struct Refresh<'a> {
    pub state: &'a Value,
    pub fresh: &'a mut Value,
    pub drift: &'a mut Vec<String>,
}

/// What the backend step of an apply produced.
pub(crate) struct Prepared<P> {
    /// The new state; the core fills in `id`, `config_path`, `file_sha256`, `drift`.
    pub state: Value,
    /// What to write; `None` leaves the file as it is.
    pub content: Option<String>,
    /// Carried to [`FileResource::finish`].
    pub pending: P,
}

/// A backend step that stopped after changing something: `state` records what now
/// exists (unknown attributes are filled from the prior state), with the error or the
/// stop notice in `diags`. The file is not written, and the next plan writes it.
pub(crate) struct Halted {
    pub state: Option<Value>,
    pub diags: Diagnostics,
}

impl From<Diagnostics> for Halted {
    /// A failure before anything was changed.
    fn from(diags: Diagnostics) -> Self {
        Halted { state: None, diags }
    }
}

/// `file_sha256` of a resource whose file an apply did not get to write: it matches no
/// file, so refresh reports drift and the next plan writes the file.
pub(crate) const NOT_WRITTEN: &str = "not-written";

/// What a file-writing resource supplies.
#[async_trait]
pub(crate) trait FileResource: Send + Sync + 'static {
    /// What the backend step hands to `finish` (e.g. a token to revoke if the write fails).
    type Pending: Send + 'static;

    /// The resource's own attributes, each declared once with its default, check and
    /// replacement (see `model`). The core adds `id`, `config_path`, `verify`,
    /// `verify_via_services_host`, `file_sha256`, `drift` and `server_version`.
    type Own: Model;

    const SPEC: Spec;

    /// Cross-attribute checks beyond each attribute's declared check.
    fn validate(&self, _config: &Value, _diags: &mut Diagnostics) {}

    /// The default `config_path` for these (planned) values; `Value::Unknown` when it
    /// depends on something not known yet.
    fn default_path(&self, _planned: &Value) -> Value {
        Value::string(Self::SPEC.default_path)
    }

    /// Computed values of the resource's own attributes, after the declared defaults
    /// are set: defaults that depend on other values, values the apply will change.
    async fn plan(&self, _req: &PlanRequest<'_>, _planned: &mut Value, _diags: &mut Diagnostics) {}

    /// The file (or block) these values render to, for `file_sha256` at plan time.
    fn planned_content(&self, planned: &Value, config: &Value) -> PlannedContent;

    /// The backend step: check, create or change what the file will point at, and
    /// render the file. An error here means the file was not written; a [`Halted`]
    /// with a state records what the step changed before it stopped.
    async fn prepare(&self, c: Change<'_>) -> Result<Prepared<Self::Pending>, Halted>;

    /// After the write: `written` is the write's error, if it failed. Returns warnings
    /// (or errors) to report; may change the state.
    async fn finish(
        &self,
        _pending: Self::Pending,
        _c: Change<'_>,
        _state: &mut Value,
        _written: Result<(), &Diagnostics>,
    ) -> Diagnostics {
        Diagnostics::new()
    }

    /// Refresh from the file's text (the block's, for a block) as it is on the
    /// Services machine, e.g. the host it names now.
    fn refresh_from_file(&self, _text: &str, _fresh: &mut Value) {}

    /// Refresh of the backend side (roles, users, tokens). It runs while the file is
    /// read: it reads the prior state, never the file, and sets other attributes than
    /// [`Self::refresh_from_file`] does.
    async fn refresh(&self, _r: Refresh<'_>) -> Result<(), Diagnostics> {
        Ok(())
    }

    /// Clean-up on the backend side before the file goes; returns warnings. An error
    /// keeps the file and the state.
    async fn delete_backend(&self, _prior: &Value) -> Result<Diagnostics, Diagnostics> {
        Ok(Diagnostics::new())
    }

    /// The version of the server this file points CircleCI at (`SPEC.compat`), read
    /// the way `verify` reaches it: `None` while an input is unknown; an error's text
    /// never holds a secret. Called at plan only when the file will be written.
    async fn server_version(
        &self,
        _planned: &Value,
        _config: &Value,
    ) -> Option<Result<Found, String>> {
        None
    }

    /// The state for an imported file (or block) `text`; the core sets `id`,
    /// `config_path`, `verify`, `file_sha256` and `drift`.
    async fn import(&self, id: &str, text: &str) -> Result<Value, Diagnostics>;
}

/// The Terraform resource made of a [`FileResource`].
pub(crate) struct ConfigFile<R> {
    inner: R,
    data: Arc<ProviderData>,
}

impl<R: FileResource> ConfigFile<R> {
    pub(crate) fn new(inner: R, data: Arc<ProviderData>) -> Self {
        ConfigFile { inner, data }
    }

    fn path_of(&self, v: &Value) -> String {
        FileAttrs::of(v)
            .ok()
            .and_then(|f| f.config_path.known())
            .or_else(|| self.inner.default_path(v).as_str().map(str::to_string))
            .unwrap_or_else(|| R::SPEC.default_path.to_string())
    }

    /// The file's bytes and mode, `None` when there is no file.
    async fn file(&self, path: &str) -> Result<Option<(Vec<u8>, u32)>, Diagnostics> {
        let services = self.data.services()?;
        Ok(services
            .read_file(path)
            .await
            .map_err(|e| ssh_diag(&format!("Could not read {path}"), e))?
            .map(|f| (f.content, f.mode)))
    }

    /// The digest key for the file at `path` (`None` while not known).
    fn keys<'a>(&'a self, path: Option<&str>) -> file_digest::ServicesKeys<'a> {
        file_digest::ServicesKeys::for_file(&self.data, path)
    }

    fn kind() -> Kind {
        if R::SPEC.secret_in_file {
            Kind::Secret
        } else {
            Kind::Plain
        }
    }

    /// `server_version` at plan: read (and a server older than CircleCI's refused) when
    /// the file will be written; otherwise the prior value stays.
    async fn plan_version(
        &self,
        compat: &Compat,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) {
        let (prior, now) = match (FileAttrs::of(req.prior), FileAttrs::of(planned)) {
            (Ok(p), Ok(n)) => (p, n),
            (Err(e), _) | (_, Err(e)) => return diags.extend(Diagnostics::from(e)),
        };
        let writes = req.is_create()
            || now.file_sha256 != prior.file_sha256
            || prior.drifted()
            || now.verify != prior.verify;
        if !writes {
            return;
        }
        let v = match now.verify.known() {
            Some(false) => Known::Value(String::new()),
            None => Known::Unknown,
            Some(true) => match tokio::time::timeout(
                PLAN_READ,
                self.inner.server_version(planned, req.config),
            )
            .await
            .unwrap_or_else(|_| {
                Some(Err(format!(
                    "no answer within {}",
                    humantime::format_duration(PLAN_READ)
                )))
            }) {
                Some(Ok(found)) => {
                    if let Err(d) = compat.refuse(&found, &self.path_of(planned)) {
                        diags.extend(d);
                    }
                    Known::Value(found.version)
                }
                Some(Err(e)) => {
                    log::info!(
                        "{}: the server's version could not be read at plan ({e}); the apply's check reads it",
                        R::SPEC.type_name
                    );
                    Known::Unknown
                }
                None => Known::Unknown,
            },
        };
        FileAttrs::put_one(planned, |f| f.server_version = v);
    }

    /// The file as it is now: `None` without a file; else the block's bytes (when the
    /// file has it) and the whole file's bytes.
    async fn current(&self, path: &str) -> Result<Option<(Option<Vec<u8>>, Vec<u8>)>, Diagnostics> {
        let Some((bytes, _)) = self.file(path).await? else {
            return Ok(None);
        };
        let block =
            managed_block::extract(&bytes, R::SPEC.type_name).map_err(|e| block_error(path, e))?;
        Ok(Some((block, bytes)))
    }
}

/// A file whose managed block's markers are broken.
pub(crate) fn block_error(path: &str, e: envfile::EnvFileError) -> Diagnostics {
    Diagnostic::error(
        "The managed block in the file is damaged",
        format!("{path}: {e}. Fix the marker lines by hand."),
    )
    .into()
}

/// A file's digest that could not be computed (no digest key could be read or made, say).
fn digest_error(path: &str, e: String) -> Diagnostics {
    Diagnostic::error(
        "Could not compute the file's digest",
        format!("{path}: {e}"),
    )
    .into()
}

/// An import whose file does not parse.
pub(crate) fn cannot_import(id: &str, e: impl std::fmt::Display) -> Diagnostics {
    Diagnostic::error("Cannot import this file", format!("{id}: {e}")).into()
}

/// The attributes every file-writing resource has, around the resource's own.
fn schema_of<R: FileResource>() -> Block {
    let s = &R::SPEC;
    let (file, hash_of) = ("the file", "the provider's block of the file");
    let mut b = model::block(R::Own::decls(), s.description);
    b.attributes.insert(
        0,
        Attribute::new("id", Type::String)
            .computed()
            .description("The config file's path (the same as `config_path`)."),
    );
    b = b.attr(Attribute::new("config_path", Type::String).optional().computed().description(&format!(
        "Absolute path of {file} on the Services machine. Default {}. The provider writes only its \
         own block of the file (between `# BEGIN terraform-provider-circleci {}` and `# END …` lines); \
         every other line is kept as it is. One resource of a type per file: two would share \
         the block. Changing it replaces the resource (the block leaves the old \
         file, and so does the file if nothing else was in it).",
        s.default_path_doc,
        s.type_name
    )))
    .attr(Attribute::new("verify", Type::Bool).optional().computed().description(s.verify_doc))
    .attr(Attribute::new(super::VERIFY_VIA, Type::Bool).optional().description(
        "Make this resource's check (`verify`) through the Services machine (`true`: an SSH \
         `direct-tcpip` channel, the name resolved there, as CircleCI will reach the server) or from \
         where Terraform runs (`false`). Default: the way the provider reaches this server (its \
         `via_services_host`, or the backend block's own).",
    ))
    .attr(Attribute::new("file_sha256", Type::String).computed().description(&format!(
        "{} of {hash_of}.{} Refresh reads it back: a change made out of band, or a missing file, \
         shows in `drift` and the next apply writes it again (empty when the file is gone).",
        if s.secret_in_file {
            "A keyed digest (`hmac-sha256$KEYID$DIGEST`, never a plain hash: the file holds a secret)"
        } else {
            "SHA-256"
        },
        if s.secret_in_file {
            " HMAC-SHA256 under a random 256-bit key kept only on the Services machine \
             (`/data/circle/external-services-cutover/file-digest.key`, or beside a file outside the \
             runbook's paths in `.terraform-provider-circleci/`; 0600, made by the first apply \
             that needs it; until then the plan shows the digest as known after apply). A \
             `pbkdf2-sha256$…` digest stored by an earlier version is kept while the file does not \
             change, so an upgrade triggers no restart."
        } else {
            ""
        }
    )))
    .attr(Attribute::new("drift", Type::String).computed().description(&format!(
        "What refresh found different from the last apply, one clause each: {file} changed or missing on \
         the Services machine{}. Empty when all is as configured; a non-empty value plans an in-place \
         update that repairs it.",
        s.drift_doc
    )));
    if let Some(c) = &s.compat {
        b = b.attr(Attribute::new("server_version", Type::String).computed().description(&format!(
            "The version the {} server reports, read when the file is written (at plan, so that the \
             plan shows it, and again by the apply's check). A server older than {}.{} is refused: \
             CircleCI Server 2.17 runs {} {}. Empty with `verify = false`; unchanged by refresh.",
            c.table.server, c.table.oldest.0, c.table.oldest.1, c.table.server, c.table.runs
        )));
    }
    b
}

#[async_trait]
impl<R: FileResource> Resource for ConfigFile<R> {
    fn type_name(&self) -> &'static str {
        R::SPEC.type_name
    }

    fn schema(&self) -> Schema {
        Schema::new(0, schema_of::<R>())
    }

    fn validate(&self, config: &Value) -> Diagnostics {
        let mut diags = Diagnostics::new();
        model::validate(R::Own::decls(), config, &mut diags);
        validate::run(
            config,
            &[("config_path", validate::Check::RemotePath)],
            &mut diags,
        );
        self.inner.validate(config, &mut diags);
        diags
    }

    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        let cfg = req.config;
        let (config, prior) = match (FileAttrs::of(cfg), FileAttrs::of(req.prior)) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => {
                diags.extend(Diagnostics::from(e));
                return vec![];
            }
        };
        model::set_defaults(R::Own::decls(), cfg, planned);
        self.inner.plan(req, planned, diags).await;
        let default_path = self.inner.default_path(planned);
        let mut now = match FileAttrs::of(planned) {
            Ok(now) => now,
            Err(e) => {
                diags.extend(Diagnostics::from(e));
                return vec![];
            }
        };
        if config.config_path.is_null() {
            now.config_path = match default_path.as_str() {
                Some(p) => Known::Value(p.to_string()),
                None => Known::Unknown,
            };
        }
        if config.verify.is_null() {
            now.verify = Known::Value(true);
        }
        now.id = now.config_path.clone();
        now.drift = Known::Value(String::new());
        match self.inner.planned_content(planned, cfg) {
            PlannedContent::Known(c) => {
                let keys = self.keys(now.config_path.value().map(String::as_str));
                match file_digest::planned(Self::kind(), c.as_bytes(), prior.digest(), &keys).await
                {
                    Ok(d) => now.file_sha256 = d.map_or(Known::Unknown, Known::Value),
                    Err(e) => diags.extend(digest_error(&self.path_of(planned), e)),
                }
            }
            PlannedContent::Unknown => now.file_sha256 = Known::Unknown,
            PlannedContent::Keep => {}
        }
        now.put(planned);
        if let Some(compat) = &R::SPEC.compat {
            self.plan_version(compat, req, planned, diags).await;
        }
        if req.is_create() {
            return vec![];
        }
        let mut replace = model::replaced(R::Own::decls(), req.prior, planned);
        if prior.config_path != now.config_path {
            replace.insert(0, AttrPath::root("config_path"));
        }
        replace
    }

    async fn create(&self, planned: &Value, config: &Value) -> Applied {
        self.apply(Change {
            prior: None,
            planned,
            config,
        })
        .await
    }

    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics> {
        let path = self.path_of(state);
        let mut fresh = state.clone();
        let mut drift = Vec::new();
        // The file and the backend side at the same time (in a plan, the SSH connection
        // and a database's logins are tens of ms each): see FileResource::refresh.
        let (current, backend) = tokio::join!(
            self.current(&path),
            self.inner.refresh(Refresh {
                state,
                fresh: &mut fresh,
                drift: &mut drift,
            })
        );
        let current = match (current, backend) {
            (Ok(c), Ok(())) => c,
            (Err(mut a), Err(b)) => {
                a.extend(b);
                return Err(a);
            }
            (Err(e), Ok(())) | (Ok(_), Err(e)) => return Err(e),
        };
        let block = current.as_ref().and_then(|(b, _)| b.as_ref());
        if let Some(text) = block.and_then(|b| std::str::from_utf8(b).ok()) {
            self.inner.refresh_from_file(text, &mut fresh);
        }
        let what = R::SPEC.what;
        let before = FileAttrs::of(state).map_err(Diagnostics::from)?;
        let mut after = FileAttrs::of(&fresh).map_err(Diagnostics::from)?;
        match (&current, block) {
            (None, _) | (Some(_), None) => {
                drift.push(if current.is_none() {
                    format!("{path} is missing on the Services machine")
                } else {
                    format!("the {what} block is missing from {path}")
                });
                after.file_sha256 = Known::Value(String::new());
            }
            (Some(_), Some(_)) if before.digest() == Some(NOT_WRITTEN) => {
                drift.push(format!(
                    "the last apply did not write the {what} block of {path}"
                ));
                // Left as it is: it matches no file, and the next apply writes the
                // block.
            }
            (Some(_), Some(bytes)) => {
                let before = before.digest().unwrap_or_default();
                let keys = self.keys(Some(&path));
                let hash = file_digest::current(Self::kind(), bytes, Some(before), &keys)
                    .await
                    .map_err(|e| digest_error(&path, e))?;
                if hash == file_digest::NO_KEY && before == file_digest::NO_KEY {
                    // Never a pass: without a key the block cannot be checked at all,
                    // and a digest of "no key" would match itself for ever.
                    drift.push(format!(
                        "there is no file digest key {} on the Services machine, so the {what} \
                         block of {path} cannot be checked; the next apply writes it",
                        keys.path().unwrap_or_default()
                    ));
                } else if before == file_digest::NO_KEY && file_digest::key_replaced(before, &hash)
                {
                    drift.push(format!(
                        "the file digest key {} on the Services machine was made since the last \
                         refresh, so the digest of {path} is new",
                        keys.path().unwrap_or_default()
                    ));
                } else if file_digest::key_replaced(before, &hash) {
                    drift.push(format!(
                        "the file digest key {} on the Services machine was replaced or removed, \
                         so the digest of {path} is new",
                        keys.path().unwrap_or_default()
                    ));
                } else if !before.is_empty() && before != hash {
                    drift.push(format!("the {what} block of {path} was changed"));
                }
                after.file_sha256 = Known::Value(hash);
            }
        }
        if !drift.is_empty() {
            log::info!("{}: {}", R::SPEC.type_name, drift.join("; "));
        }
        after.drift = Known::Value(drift.join("; "));
        after.put(&mut fresh);
        Ok(Some(fresh))
    }

    async fn update(&self, prior: &Value, planned: &Value, config: &Value) -> Applied {
        self.apply(Change {
            prior: Some(prior),
            planned,
            config,
        })
        .await
    }

    async fn delete(&self, prior: &Value) -> Applied {
        let path = self.path_of(prior);
        let warnings = match self.inner.delete_backend(prior).await {
            Ok(w) => w,
            Err(d) => return Applied::kept(prior, d),
        };
        match self.remove(&path).await {
            Ok(()) => Applied::deleted(warnings),
            Err(mut d) => {
                d.extend(warnings);
                Applied::kept(prior, d)
            }
        }
    }

    async fn import(&self, id: &str) -> Result<Value, Diagnostics> {
        let mut diags = Diagnostics::new();
        validate::remote_path(id, AttrPath::root("config_path"), &mut diags);
        if diags.has_errors() {
            return Err(Diagnostic::error(
                "Invalid import ID",
                format!(
                    "the import ID is the config file's absolute path, e.g. {}; got {id:?}",
                    R::SPEC.default_path
                ),
            )
            .into());
        }
        let nothing = |why: String| Diagnostics::from(Diagnostic::error("Nothing to import", why));
        // A file without the provider's block (written by hand, as the runbook says) is
        // read whole; its digest stays empty, so the next apply adds the block.
        let (text, hash) = match self.current(id).await? {
            Some((Some(b), _)) => {
                let hash = file_digest::digest(Self::kind(), &b, None, &self.keys(Some(id)))
                    .await
                    .map_err(|e| digest_error(id, e))?;
                (String::from_utf8(b), hash)
            }
            Some((None, whole)) => (String::from_utf8(whole), String::new()),
            None => {
                let target = self.data.services()?.config().target();
                return Err(nothing(format!("there is no file {id} on {target}")));
            }
        };
        let text = text.map_err(|_| {
            Diagnostics::from(Diagnostic::error(
                "Cannot import this file",
                format!("the settings in {id} are not UTF-8 text"),
            ))
        })?;
        let mut v = self.inner.import(id, &text).await?;
        FileAttrs {
            id: Known::Value(id.to_string()),
            config_path: Known::Value(id.to_string()),
            verify: Known::Value(true),
            file_sha256: Known::Value(hash),
            drift: Known::Value(String::new()),
            server_version: Known::Null,
        }
        .put(&mut v);
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
