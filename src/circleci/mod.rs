//! The runbook's knowledge as pure functions: config-file formats and defaults.

pub mod envfile;
pub mod migration;
pub mod mongo;
pub mod nomad;
pub mod nomad_user_data;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod restart;
pub mod restore_tools;
pub mod vault;
pub mod versions;
