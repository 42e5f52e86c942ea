//! One module per external system. Nothing in here knows about Terraform.

pub mod autoscaling;
pub mod aws;
pub mod ec2;
pub mod mongo;
pub mod nomad;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod ssh;
pub mod vault;

/// reqwest (Vault, Nomad) runs rustls without choosing a crypto provider itself; ours
/// is AWS-LC, as for every other TLS connection of the provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// An error and its sources on one line, each source once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !m.contains(&t) {
            m.push_str(&format!(": {t}"));
        }
        src = s.source();
    }
    m
}
