//! "Setting up External RabbitMQ": /etc/circleconfig/shared/rabbitmq.

use super::envfile::{self, Style};

pub(crate) const DEFAULT_PATH: &str = "/etc/circleconfig/shared/rabbitmq";
pub(crate) const DEFAULT_PORT: u16 = 5672;
pub(crate) const DEFAULT_TLS_PORT: u16 = 5671;

pub(crate) fn render(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
) -> Result<String, envfile::EnvFileError> {
    let port = port.to_string();
    envfile::render(
        &[
            ("RABBITMQ_HOST", host),
            ("RABBITMQ_PORT", &port),
            ("RABBITMQ_USERNAME", user),
            ("RABBITMQ_PASSWORD", password),
        ],
        Style::Export,
    )
}

/// Host, port and user from the file (the password is not needed back).
pub(crate) fn parse(text: &str) -> Result<(String, u16, String), String> {
    let a = envfile::parse(text).map_err(|e| e.to_string())?;
    let get = |k: &str| {
        envfile::lookup(&a, k)
            .map(str::to_string)
            .ok_or(format!("{k} is not set in the file"))
    };
    let port = get("RABBITMQ_PORT")?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("RABBITMQ_PORT {port:?} is not a port number"))?;
    Ok((get("RABBITMQ_HOST")?, port, get("RABBITMQ_USERNAME")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_runbook_form() {
        let t = super::render("mq", 5672, "circle", "p\"w$").unwrap();
        assert_eq!(
            super::parse(&t).unwrap(),
            ("mq".into(), 5672, "circle".into())
        );
        let runbook = "export RABBITMQ_HOST=\"mq\"  \nexport RABBITMQ_PORT=5672  \nexport RABBITMQ_USERNAME=\"u\"  \nexport RABBITMQ_PASSWORD=\"p\"\n";
        assert_eq!(super::parse(runbook).unwrap().1, 5672);
    }
}
