//! Logs as hclog-style JSON lines on stderr, so Terraform's TF_LOG / TF_LOG_PROVIDER
//! show and filter them like any Go provider's. Stdout is never touched.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct HcLogger {
    level: LevelFilter,
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

/// The level from TF_LOG_PROVIDER, else TF_LOG; warnings only when neither is set
/// (Terraform discards plugin logs then anyway, so we spare the work).
pub(crate) fn level_from_env() -> LevelFilter {
    let v = std::env::var("TF_LOG_PROVIDER")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("TF_LOG").ok())
        .unwrap_or_default();
    match v.trim().to_ascii_lowercase().as_str() {
        "trace" | "json" => LevelFilter::Trace,
        "debug" => LevelFilter::Debug,
        "info" => LevelFilter::Info,
        "warn" => LevelFilter::Warn,
        "error" => LevelFilter::Error,
        "off" => LevelFilter::Off,
        _ => LevelFilter::Warn,
    }
}

/// One log line, hclog's shape: `@timestamp` has exactly six fractional digits.
pub(crate) fn format_line(
    level: Level,
    module: &str,
    message: &str,
    now: std::time::SystemTime,
) -> String {
    let ts = humantime::format_rfc3339_micros(now).to_string();
    let obj = serde_json::json!({
        "@level": level_name(level),
        "@message": message,
        "@module": module,
        "@timestamp": ts,
    });
    obj.to_string()
}

/// Below `warn`, only these crates may log. HTTP and database client libraries log
/// request bodies and statements at debug and trace, and those carry tokens and
/// password verifiers: they are kept out even under TF_LOG=trace.
const VERBOSE_TARGETS: [&str; 3] = ["terraform_provider_circleci", "russh", "rustls"];

pub(crate) fn target_allowed(level: Level, target: &str) -> bool {
    level <= Level::Warn || VERBOSE_TARGETS.iter().any(|p| target.starts_with(p))
}

impl Log for HcLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level && target_allowed(m.level(), m.target())
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let target = record.target();
        let module = if target.starts_with("terraform_provider_circleci") {
            "provider.circleci".to_string()
        } else {
            format!(
                "provider.circleci.{}",
                target.split("::").next().unwrap_or(target)
            )
        };
        let line = format_line(
            record.level(),
            &module,
            &record.args().to_string(),
            std::time::SystemTime::now(),
        );
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    fn flush(&self) {}
}

pub(crate) fn init() {
    let level = level_from_env();
    if log::set_boxed_logger(Box::new(HcLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatty_libraries_are_silenced_below_warn() {
        assert!(target_allowed(
            Level::Trace,
            "terraform_provider_circleci::backends::ssh"
        ));
        assert!(!target_allowed(Level::Debug, "tokio_postgres::query"));
        assert!(!target_allowed(Level::Trace, "reqwest::connect"));
        assert!(target_allowed(Level::Warn, "reqwest::connect"));
    }

    #[test]
    fn line_has_hclog_shape() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let line = format_line(Level::Debug, "provider.circleci", "hi \"x\"", t);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["@level"], "debug");
        assert_eq!(v["@message"], "hi \"x\"");
        assert_eq!(v["@timestamp"], "2023-11-14T22:13:20.123456Z");
    }
}
