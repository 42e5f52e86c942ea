//! "Setting up an External Nomad Server": /etc/circleconfig/shared/nomad.

use super::envfile::{self, Style};

pub(crate) const DEFAULT_PATH: &str = "/etc/circleconfig/shared/nomad";

pub(crate) fn render(endpoint: &str) -> Result<String, envfile::EnvFileError> {
    envfile::render(&[("NOMAD_API_ENDPOINT", endpoint)], Style::Export)
}

pub(crate) fn parse(text: &str) -> Result<String, String> {
    let a = envfile::parse(text).map_err(|e| e.to_string())?;
    envfile::lookup(&a, "NOMAD_API_ENDPOINT")
        .map(str::to_string)
        .ok_or_else(|| "NOMAD_API_ENDPOINT is not set in the file".to_string())
}

/// `http(s)://host[:port]`, nothing else.
pub(crate) fn check_endpoint(s: &str) -> Result<(), String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(format!("{s:?} must start with https:// (or http://)"));
    }
    if u.host().is_none() || !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{s:?} must be scheme://host:port"));
    }
    if (u.path() != "/" && !u.path().is_empty())
        || u.query().is_some()
        || u.fragment().is_some()
        || s.ends_with('/')
    {
        return Err(format!(
            "{s:?} must not have a path: write it as https://HOST:4646"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(check_endpoint("https://nomad.internal:4646").is_ok());
        assert!(check_endpoint("http://10.0.0.1:4646").is_ok());
        for bad in [
            "nomad:4646",
            "https://n:4646/v1",
            "https://n:4646/",
            "ftp://n",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse(&render("https://n:4646").unwrap()).unwrap(),
            "https://n:4646"
        );
        // An explicit default port stays as written.
        assert!(check_endpoint("https://nomad.example.com:443").is_ok());
        assert_eq!(
            parse(&render("https://nomad.example.com:443").unwrap()).unwrap(),
            "https://nomad.example.com:443"
        );
    }
}
