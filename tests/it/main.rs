//! The integration and end-to-end tests, one binary: each module is one area, run
//! against the real servers that dev/services/up.sh starts (tests/it/common says how a
//! missing server fails). The fault suite, which stops and kills servers, is its own
//! binary (tests/faults.rs) so that it never runs beside these.
//!
//! Tests here run concurrently. A test that changes what others read (the simulator's
//! settings, the runbook's default databases, role `circle`, Vault's `context-service`
//! key) holds `common::sim::SIMULATOR` for its whole run; every other test works on
//! names of its own.

// Tests may panic (that is how they fail) and cast freely (their numbers are small).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

mod docs;
mod e2e_complete_example;
mod e2e_data_migration;
mod e2e_external_mongo;
mod e2e_external_rabbitmq_nomad;
mod e2e_external_redis;
mod e2e_file_digest;
mod e2e_nomad_client_launch_config;
mod e2e_nomad_client_static;
mod e2e_operator_content;
mod e2e_postgres_databases;
mod e2e_secrets_scan;
mod e2e_services_restart;
mod e2e_transport_warnings;
mod e2e_tunnel;
mod e2e_tunnel_replica_set;
mod e2e_vault_transit_client;
mod embedded_export;
mod embedded_mongo;
mod envfile_bash;
mod mongo_standin;
mod nomad_user_data_fuzz;
mod plugin_handshake;
mod plugin_unimplemented;
mod postgres_backend;
mod release_mirror;
mod ssh_backend;
mod vault_transit_backup;
