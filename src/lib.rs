//! terraform-provider-circleci: CircleCI Server 2.17's "External Services" runbook as
//! Terraform resources. Layers, each knowing only the one below it:
//! `plugin` (the protocol) → `provider` + `resources` (glue) → `backends` (external
//! systems) and `circleci` (the runbook's knowledge as pure functions).
//!
//! Every module is private. The crate's surface is [`run`], which the binary calls, and
//! [`testing`], the parts the integration tests drive below Terraform.

// Unit tests may cast freely (their numbers are small literals) and say a case cannot
// happen (clippy.toml already lets them unwrap, expect and panic).
#![cfg_attr(
    test,
    allow(
        clippy::unreachable,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap
    )
)]

mod backends;
mod circleci;
mod fault_point;
mod logging;
mod plugin;
mod provider;
mod resources;
mod secret;

use std::process::ExitCode;
use std::sync::Arc;

/// The stack of each of the runtime's threads (see [`run`]).
const WORKER_STACK: usize = 8 * 1024 * 1024;

/// The plugin as Terraform starts it: checks the handshake environment, serves the
/// provider over gRPC until Terraform stops it, and returns the process's exit status.
/// Stdout carries the handshake only; everything else goes to stderr.
pub fn run() -> ExitCode {
    let env = plugin::HandshakeEnv::from_process();
    if let Err(e) = env.check() {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    logging::init();
    // Each request's future is polled on a worker thread, nested as deep as the
    // cutover goes (a failed migration's fallback runs the restart's steps inside the
    // migration's apply, down to one SSH command). A debug build needed more than the
    // 2 MiB a thread gets by default on that path (the provider aborted with a stack
    // overflow in the middle of a cutover), and between 2 and 4 MiB there. Reserved
    // address space, not memory: pages are used only as deep as the stack goes.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(WORKER_STACK)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terraform-provider-circleci: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let provider = Arc::new(provider::CircleCiProvider::new());
    match rt.block_on(plugin::serve(provider, env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("terraform-provider-circleci: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the integration tests (`tests/it`) drive directly, below Terraform: the
/// backends against the real servers, the runbook's formats, the schema the docs are
/// generated from. Not an API for other crates: it changes with the provider.
pub mod testing {
    pub use crate::plugin::schema::{Attribute, Block, Nesting, Type};
    pub use crate::plugin::Provider;
    pub use crate::provider::CircleCiProvider;
    pub use crate::resources::data_migration::embedded_postgres;
    pub use crate::resources::file_sha256;
    pub use crate::secret::Secret;

    /// The Services machine over SSH.
    pub mod ssh {
        pub use crate::backends::ssh::{
            new_mark, parse_host_key, HostKeyPolicy, Jobs, Program, RemoteCommand, ServicesHost,
            SshAuth, SshConfig, SshError, SshErrorKind,
        };
    }

    /// PostgreSQL: the admin client and the runbook's databases.
    pub mod postgres {
        pub use crate::backends::postgres::{verify_login, PgAdmin, PgConfig, SslMode, Tls};
        pub use crate::circleci::postgres::DEFAULT_DATABASES;
    }

    /// MongoDB: the admin client and the runbook's databases.
    pub mod mongo {
        pub use crate::backends::mongo::MongoAdmin;
        pub use crate::circleci::mongo::DEFAULT_DATABASES;
    }

    /// Vault's transit API.
    pub mod vault {
        pub use crate::backends::vault::{Vault, VaultConfig};
    }

    /// The runbook's `KEY=value` files.
    pub mod envfile {
        pub use crate::circleci::envfile::{lookup, parse, render, Style};
    }

    /// The migration's images, paths and the per-table comparison.
    pub mod migration {
        pub use crate::circleci::migration::{
            compare, parse_stats, TableStat, MONGO_STATS_SCRIPT, PG_DATA, PG_IMAGE,
        };
    }

    /// The Nomad clients' user-data rewrite.
    pub mod nomad_user_data {
        pub use crate::circleci::nomad_user_data::rewrite;
    }

    /// The config files the restart checks.
    pub mod restart {
        pub use crate::circleci::restart::files;
    }
}
