//! What a provider and its resources implement. Nothing here mentions protobuf or tonic.

use std::sync::Arc;

use async_trait::async_trait;

use super::diag::{AttrPath, Diagnostics};
use super::schema::Schema;
use super::value::Value;

/// What Terraform told us about itself in ConfigureProvider.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    pub terraform_version: String,
    /// Terraform ≥ 1.11 sets this; older versions cannot send write-only attributes.
    pub write_only_allowed: bool,
}

/// The provider: its own configuration, and the resources it offers.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The provider's own schema: the `provider` block and every resource's.
    fn schema(&self) -> Schema;

    /// Every managed resource type, created once at start-up.
    fn resources(&self) -> Vec<Arc<dyn Resource>>;

    /// Static checks of the provider configuration; values may be unknown here.
    fn validate(&self, _config: &Value) -> Diagnostics {
        Diagnostics::new()
    }

    /// Stores the configuration for later use. Must not connect anywhere: Terraform
    /// configures the provider for every plan, even when nothing needs a connection.
    async fn configure(&self, config: &Value, client: &ClientInfo) -> Diagnostics;
}

/// The change Terraform proposes for one resource instance.
pub struct PlanRequest<'a> {
    /// Null when the resource is being created.
    pub prior: &'a Value,
    /// The configuration, with write-only values still in it.
    pub config: &'a Value,
}

impl PlanRequest<'_> {
    pub fn is_create(&self) -> bool {
        self.prior.is_null()
    }
}

/// The outcome of an apply step when a resource needs more than `Result`: warnings on
/// success, or a failure after something was already changed, with `state` recording
/// what now exists so Terraform keeps track of it.
#[derive(Debug, Default)]
pub struct Applied {
    /// `None` keeps the prior state (on error) or removes the object (on delete).
    pub state: Option<Value>,
    pub diags: Diagnostics,
}

impl Applied {
    /// A failed delete: the object stays, as it was.
    pub fn kept(prior: &Value, diags: Diagnostics) -> Self {
        Applied {
            state: Some(prior.clone()),
            diags,
        }
    }

    /// A finished delete.
    pub fn deleted(diags: Diagnostics) -> Self {
        Applied { state: None, diags }
    }

    pub fn from_result(r: Result<Value, Diagnostics>) -> Self {
        match r {
            Ok(v) => Applied {
                state: Some(v),
                diags: Diagnostics::new(),
            },
            Err(d) => Applied {
                state: None,
                diags: d,
            },
        }
    }
}

/// One managed resource type.
#[async_trait]
pub trait Resource: Send + Sync + 'static {
    /// The full type name, e.g. `circleci_external_redis`.
    fn type_name(&self) -> &'static str;

    fn schema(&self) -> Schema;

    /// Static checks of one configuration; values may be unknown here.
    fn validate(&self, _config: &Value) -> Diagnostics {
        Diagnostics::new()
    }

    /// Completes a plan. `planned` arrives as Terraform's proposed new state with
    /// write-only attributes nulled and, on create, every computed attribute the
    /// configuration leaves unset marked unknown. Fill in defaults and the computed
    /// values that can be known now, mark the ones that will change unknown, and return
    /// the attributes whose change forces replacement.
    async fn plan(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath>;

    /// The plan of a destroy: warnings (or errors) about what it will do to `prior`.
    async fn plan_destroy(&self, _prior: &Value, _diags: &mut Diagnostics) {}

    /// Creates the object. `config` carries write-only values. A failure after something
    /// was already changed returns a state that records it, with the error (or none,
    /// where a tainted object's destroy would do harm: `circleci_services_restart`).
    async fn create(&self, planned: &Value, config: &Value) -> Applied;

    /// Refreshes the state from the real object; `Ok(None)` when it is gone.
    async fn read(&self, state: &Value) -> Result<Option<Value>, Diagnostics>;

    /// Changes the object in place; `config` carries write-only values.
    async fn update(&self, prior: &Value, planned: &Value, config: &Value) -> Applied;

    /// Deletes the object. A state in the result keeps it (in whatever shape remains).
    async fn delete(&self, prior: &Value) -> Applied;

    /// Builds a state from an import ID; Terraform calls `read` on it next.
    async fn import(&self, id: &str) -> Result<Value, Diagnostics>;
}
