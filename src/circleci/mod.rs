//! The runbook's knowledge as pure functions: config-file formats and defaults.

pub(crate) mod envfile;
pub(crate) mod migration;
pub(crate) mod mongo;
pub(crate) mod nomad;
pub(crate) mod nomad_user_data;
pub(crate) mod postgres;
pub(crate) mod rabbitmq;
pub(crate) mod redis;
pub(crate) mod restart;
pub(crate) mod restore_tools;
pub(crate) mod vault;
pub(crate) mod versions;
