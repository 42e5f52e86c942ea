//! One module per external system. Nothing in here knows about Terraform.

pub(crate) mod autoscaling;
pub(crate) mod aws;
pub(crate) mod ec2;
pub(crate) mod mongo;
pub(crate) mod nomad;
pub(crate) mod postgres;
pub(crate) mod rabbitmq;
pub(crate) mod redis;
pub(crate) mod ssh;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod vault;

/// reqwest (Vault, Nomad) runs rustls without choosing a crypto provider itself; ours
/// is AWS-LC, as for every other TLS connection of the provider.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// An error and its sources on one line, each source once.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
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

/// The first error of type `T` in `e`'s source chain, looking inside `std::io::Error`s
/// too (their `source()` skips the error they wrap). Classification by type, never by
/// message text.
pub(crate) fn find_in_chain<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(t) = find_in_chain::<T>(inner) {
                return Some(t);
            }
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn finds_errors_wrapped_in_io_errors() {
        let e = Outer(std::io::Error::other(Inner));
        assert!(super::find_in_chain::<Inner>(&e).is_some());
        assert!(super::find_in_chain::<std::fmt::Error>(&e).is_none());
        assert_eq!(super::chain(&e), "outer: inner");
    }
}
