//! terraform-provider-circleci: CircleCI Server 2.17's "External Services" runbook as
//! Terraform resources. Layers, each knowing only the one below it:
//! `plugin` (the protocol) → `provider` + `resources` (glue) → `backends` (external
//! systems) and `circleci` (the runbook's knowledge as pure functions).

pub mod backends;
pub mod circleci;
pub mod fault_point;
pub mod logging;
pub mod plugin;
pub mod provider;
pub mod resources;
pub mod secret;
