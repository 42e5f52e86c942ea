//! Plan-time checks shared by resources. Each reports on the attribute it was given.

use std::time::Duration;

use crate::plugin::{AttrPath, Diagnostics, Value};

/// A hostname (RFC 1123 labels; `_` tolerated) or an IPv4/IPv6 address.
pub fn is_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    if h.is_empty() || h.len() > 253 {
        return false;
    }
    h.trim_end_matches('.').split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

pub fn host(h: &str, path: AttrPath, diags: &mut Diagnostics) {
    if !is_host(h) {
        diags.attr_error(
            path,
            "Invalid host",
            format!("{h:?} is neither a hostname nor an IP address"),
        );
    }
}

/// A TCP port, 1-65535. Unknown or null values pass (None).
pub fn port(v: &Value, path: AttrPath, diags: &mut Diagnostics) -> Option<u16> {
    if v.is_null() || v.is_unknown() {
        return None;
    }
    match crate::plugin::value::coerce_number(v).and_then(|n| n.as_i64()) {
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        _ => {
            diags.attr_error(
                path,
                "Invalid port",
                format!("{v:?} is not a port number (1-65535)"),
            );
            None
        }
    }
}

/// A duration such as `30s`, `5m` or `1h30m`.
pub fn duration(s: &str, path: AttrPath, diags: &mut Diagnostics) -> Option<Duration> {
    match humantime::parse_duration(s) {
        Ok(d) if d > Duration::ZERO => Some(d),
        Ok(_) => {
            diags.attr_error(path, "Invalid duration", "must be longer than zero");
            None
        }
        Err(e) => {
            diags.attr_error(
                path,
                "Invalid duration",
                format!("{s:?}: {e} (examples: 30s, 5m, 1h30m)"),
            );
            None
        }
    }
}

/// An absolute path on the Services machine, without NUL or newline, not a directory.
pub fn remote_path(p: &str, path: AttrPath, diags: &mut Diagnostics) {
    let why = if !p.starts_with('/') {
        Some("must be an absolute path (start with /)")
    } else if p.ends_with('/') {
        Some("must name a file, not a directory")
    } else if p.contains('\0') || p.contains('\n') {
        Some("must not contain NUL or newline characters")
    } else if p.split('/').any(|c| c == "..") {
        Some("must not contain .. components")
    } else {
        None
    };
    if let Some(why) = why {
        diags.attr_error(path, "Invalid path", format!("{p:?} {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "redis.internal",
            "10.0.1.5",
            "::1",
            "a-b.c_d.example.",
            "localhost",
        ] {
            assert!(is_host(ok), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "-a.b",
            "a..b",
            "redis.internal:6379",
            "\"q\"",
            "$(x)",
        ] {
            assert!(!is_host(bad), "{bad}");
        }
    }

    #[test]
    fn ports_and_paths() {
        let mut d = Diagnostics::new();
        assert_eq!(
            port(&Value::int(6379), AttrPath::root("port"), &mut d),
            Some(6379)
        );
        assert_eq!(port(&Value::int(0), AttrPath::root("port"), &mut d), None);
        assert_eq!(
            port(&Value::int(65536), AttrPath::root("port"), &mut d),
            None
        );
        assert_eq!(d.0.len(), 2);
        let mut d = Diagnostics::new();
        remote_path(
            "/etc/circleconfig/shared/redis",
            AttrPath::root("config_path"),
            &mut d,
        );
        assert!(d.is_empty());
        for bad in ["etc/x", "/etc/", "/a/../b", "/a\nb"] {
            remote_path(bad, AttrPath::root("config_path"), &mut d);
        }
        assert_eq!(d.0.len(), 4);
    }
}
