//! terraform-provider-circleci: started by Terraform as a plugin.

use std::process::ExitCode;
use std::sync::Arc;

use terraform_provider_circleci::{logging, plugin, provider::CircleCiProvider};

fn main() -> ExitCode {
    let env = plugin::HandshakeEnv::from_process();
    if let Err(e) = env.check() {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    logging::init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("terraform-provider-circleci: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let provider = Arc::new(CircleCiProvider::new());
    match rt.block_on(plugin::serve(provider, env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("terraform-provider-circleci: {e}");
            ExitCode::from(1)
        }
    }
}
