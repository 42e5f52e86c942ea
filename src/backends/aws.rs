//! AWS: the standard configuration chain (environment, profile, SSO, IMDS) loaded once,
//! lazily, and the clients built on it.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use tokio::sync::OnceCell;

use super::chain;

use super::autoscaling::Autoscaling;
use super::ec2::Ec2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AwsErrorKind {
    /// No answer: connection refused, DNS, timeout.
    Unreachable,
    /// No credentials, or AWS refused them.
    Credentials,
    /// The caller may not do this.
    Denied,
    NotFound,
    /// Region missing or configuration unusable.
    Config,
    Other,
}

/// A library's error kept as the source of an [`AwsError`].
pub(crate) type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What AWS (or the configuration chain) said, classified by the AWS error code. The
/// SDK's or HTTP client's error, when one caused it, is the source: [`chain`] prints
/// it after the message.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct AwsError {
    pub kind: AwsErrorKind,
    /// The AWS error code (`ValidationError`, `AccessDenied`, ...), when AWS answered.
    pub code: Option<String>,
    pub message: String,
    #[source]
    pub source: Option<Cause>,
}

impl AwsError {
    pub(crate) fn new(kind: AwsErrorKind, code: Option<String>, message: String) -> Self {
        AwsError {
            kind,
            code,
            message,
            source: None,
        }
    }

    /// An error caused by a library's error `e`, which stays its source.
    pub(crate) fn caused(
        kind: AwsErrorKind,
        message: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        AwsError {
            kind,
            code: None,
            message: message.into(),
            source: Some(Box::new(e)),
        }
    }

    /// Classifies an error AWS answered with by its code.
    pub(crate) fn from_code(code: Option<String>, message: String) -> Self {
        let c = code.as_deref().unwrap_or_default();
        let kind = if c.contains("NotFound") {
            AwsErrorKind::NotFound
        } else if matches!(
            c,
            "AuthFailure"
                | "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidAccessKeyId"
        ) {
            AwsErrorKind::Credentials
        } else if matches!(
            c,
            "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation"
        ) {
            AwsErrorKind::Denied
        } else {
            AwsErrorKind::Other
        };
        AwsError::new(kind, code.filter(|c| !c.is_empty()), message)
    }
}

/// What the provider's `aws` block says; unset fields fall back to the AWS chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AwsSettings {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint: Option<String>,
    pub timeout: Duration,
}

pub(crate) struct AwsClients {
    pub region: String,
    pub autoscaling: Autoscaling,
    pub ec2: Ec2,
}

/// Loads the AWS configuration on first use only: Terraform configures the provider on
/// every run, and the chain may ask the instance metadata service.
pub(crate) struct Aws {
    settings: AwsSettings,
    /// A failure is kept too (loading may ask the instance metadata service, slowly),
    /// shared by every caller.
    clients: OnceCell<Result<AwsClients, std::sync::Arc<AwsError>>>,
}

impl Aws {
    pub(crate) fn new(settings: AwsSettings) -> Self {
        Aws {
            settings,
            clients: OnceCell::new(),
        }
    }

    pub(crate) async fn clients(&self) -> Result<&AwsClients, AwsError> {
        self.clients
            .get_or_init(async || load(&self.settings).await.map_err(std::sync::Arc::new))
            .await
            .as_ref()
            .map_err(|e| AwsError {
                kind: e.kind,
                code: e.code.clone(),
                message: "loading the AWS configuration".into(),
                source: Some(Box::new(e.clone())),
            })
    }
}

async fn load(s: &AwsSettings) -> Result<AwsClients, AwsError> {
    super::install_crypto_provider();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(s.timeout)
            .operation_attempt_timeout(s.timeout)
            .operation_timeout(s.timeout)
            .build(),
    );
    if let Some(r) = &s.region {
        loader = loader.region(Region::new(r.clone()));
    }
    if let Some(p) = &s.profile {
        loader = loader.profile_name(p);
    }
    if let Some(e) = &s.endpoint {
        loader = loader.endpoint_url(e);
    }
    let conf = loader.load().await;
    let Some(region) = conf.region().map(|r| r.to_string()) else {
        return Err(AwsError::new(
            AwsErrorKind::Config,
            None,
            "no AWS region: none configured, none in AWS_REGION, none in the AWS profile".into(),
        ));
    };
    let ec2_endpoint = s
        .endpoint
        .clone()
        .or_else(|| {
            std::env::var("AWS_ENDPOINT_URL_EC2")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .or_else(|| conf.endpoint_url().map(str::to_string))
        .unwrap_or_else(|| default_ec2_endpoint(&region));
    let ec2 = Ec2::new(
        ec2_endpoint,
        region.clone(),
        conf.credentials_provider(),
        s.timeout,
    )?;
    let at = match &s.endpoint {
        Some(e) => e.clone(),
        None => format!("AWS Auto Scaling in {region}"),
    };
    Ok(AwsClients {
        region,
        autoscaling: Autoscaling::new(aws_sdk_autoscaling::Client::new(&conf), at),
        ec2,
    })
}

fn default_ec2_endpoint(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("https://ec2.{region}.amazonaws.com.cn")
    } else {
        format!("https://ec2.{region}.amazonaws.com")
    }
}

/// An SDK error as an [`AwsError`]: AWS's code and message, the SDK's error its source.
pub(crate) fn sdk_error<E, R>(
    op: &str,
    at: &str,
    e: aws_sdk_autoscaling::error::SdkError<E, R>,
) -> AwsError
where
    E: aws_sdk_autoscaling::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_autoscaling::error::SdkError;
    // The chain of sources reads "dispatch failure: io error: ...: Connection refused";
    // the SDK's own DisplayErrorContext appends a Debug dump of the same.
    let detail = chain(&e);
    match &e {
        SdkError::ServiceError(s) => {
            let code = s.err().code().map(str::to_string);
            let msg = s.err().message().unwrap_or_default().to_string();
            AwsError::from_code(
                code.clone(),
                format!(
                    "{op} at {at}: {}: {msg}",
                    code.as_deref().unwrap_or("error")
                ),
            )
        }
        SdkError::TimeoutError(_) => {
            AwsError::caused(AwsErrorKind::Unreachable, format!("{op} at {at}"), e)
        }
        _ if detail.contains("credentials") => {
            AwsError::caused(AwsErrorKind::Credentials, format!("{op} at {at}"), e)
        }
        SdkError::DispatchFailure(_) => {
            AwsError::caused(AwsErrorKind::Unreachable, format!("{op} at {at}"), e)
        }
        _ => AwsError::caused(AwsErrorKind::Other, format!("{op} at {at}"), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_classified() {
        let k = |c: &str| AwsError::from_code(Some(c.into()), String::new()).kind;
        assert_eq!(
            k("InvalidLaunchTemplateId.NotFound"),
            AwsErrorKind::NotFound
        );
        assert_eq!(k("AuthFailure"), AwsErrorKind::Credentials);
        assert_eq!(k("AccessDenied"), AwsErrorKind::Denied);
        assert_eq!(k("ValidationError"), AwsErrorKind::Other);
    }

    #[test]
    fn ec2_endpoints() {
        assert_eq!(
            default_ec2_endpoint("us-east-1"),
            "https://ec2.us-east-1.amazonaws.com"
        );
        assert_eq!(
            default_ec2_endpoint("cn-north-1"),
            "https://ec2.cn-north-1.amazonaws.com.cn"
        );
    }
}
