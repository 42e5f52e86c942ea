//! The three EC2 launch-template calls the Nomad client resource needs, as signed EC2
//! Query requests (SigV4 from `aws-sigv4`, the SDK's own signer) over reqwest.
//!
//! Why not `aws-sdk-ec2`: it is one of the largest crates there is, and these three
//! calls do not justify its build time on two cores (figures in the README). The cost of
//! signing by hand is that the response's launch template data must be turned back into
//! request parameters; [`data_to_params`] does that with the EC2 API's naming rules
//! (`fooBar` → `FooBar`, list `fooSet` of `item`s → `Foo.1`, `Foo.2`, ...) and the three
//! exceptions the API model has, so a new version carries *every* field of its source.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::aws::{AwsError, AwsErrorKind};

const API_VERSION: &str = "2016-11-15";

/// One launch template version, as DescribeLaunchTemplateVersions returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TemplateVersion {
    pub template_id: String,
    pub template_name: String,
    pub number: i64,
    pub is_default: bool,
    /// The version's data as CreateLaunchTemplateVersion parameters
    /// (`LaunchTemplateData.ImageId=...`), UserData excluded.
    pub params: Vec<(String, String)>,
    /// Base64, as EC2 stores it.
    pub user_data: Option<String>,
}

pub(crate) struct Ec2 {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    credentials: Option<SharedCredentialsProvider>,
}

impl Ec2 {
    pub(crate) fn new(
        endpoint: String,
        region: String,
        credentials: Option<SharedCredentialsProvider>,
        timeout: Duration,
    ) -> Result<Self, AwsError> {
        super::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| AwsError::caused(AwsErrorKind::Other, "the HTTP client for EC2", e))?;
        Ok(Ec2 {
            http,
            endpoint,
            region,
            credentials,
        })
    }

    /// One version (`"3"`, `"$Latest"` or `"$Default"`) of a template; `None` when the
    /// template or the version does not exist.
    pub(crate) async fn describe_version(
        &self,
        template_id: &str,
        version: &str,
    ) -> Result<Option<TemplateVersion>, AwsError> {
        let params = vec![
            ("LaunchTemplateId".to_string(), template_id.to_string()),
            ("LaunchTemplateVersion.1".to_string(), version.to_string()),
        ];
        let body = match self.call("DescribeLaunchTemplateVersions", params).await {
            Ok(b) => b,
            Err(e) if e.kind == AwsErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let doc = parse(&body)?;
        let item = doc
            .descendants()
            .find(|n| n.has_tag_name("launchTemplateVersionSet"))
            .and_then(|set| set.children().find(|n| n.is_element()));
        let Some(item) = item else {
            return Ok(None);
        };
        Ok(Some(version_from_xml(item)?))
    }

    /// Creates a version with exactly `params` (the full data) and `user_data`; returns
    /// its number.
    pub(crate) async fn create_version(
        &self,
        template_id: &str,
        source_version: i64,
        description: &str,
        data: &[(String, String)],
        user_data_b64: &str,
    ) -> Result<i64, AwsError> {
        let mut params = vec![
            ("LaunchTemplateId".to_string(), template_id.to_string()),
            ("SourceVersion".to_string(), source_version.to_string()),
            ("VersionDescription".to_string(), description.to_string()),
        ];
        params.extend(data.iter().cloned());
        params.push((
            "LaunchTemplateData.UserData".to_string(),
            user_data_b64.to_string(),
        ));
        let body = self.call("CreateLaunchTemplateVersion", params).await?;
        let doc = parse(&body)?;
        doc.descendants()
            .find(|n| n.has_tag_name("versionNumber"))
            .and_then(|n| n.text())
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| {
                AwsError::new(
                    AwsErrorKind::Other,
                    None,
                    "CreateLaunchTemplateVersion answered without a versionNumber".into(),
                )
            })
    }

    /// Deletes one version. A version that is already gone is not an error.
    pub(crate) async fn delete_version(
        &self,
        template_id: &str,
        number: i64,
    ) -> Result<(), AwsError> {
        let params = vec![
            ("LaunchTemplateId".to_string(), template_id.to_string()),
            ("LaunchTemplateVersion.1".to_string(), number.to_string()),
        ];
        let body = match self.call("DeleteLaunchTemplateVersions", params).await {
            Ok(b) => b,
            Err(e) if e.kind == AwsErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let doc = parse(&body)?;
        if let Some(failed) = doc
            .descendants()
            .find(|n| n.has_tag_name("unsuccessfullyDeletedLaunchTemplateVersionSet"))
            .and_then(|s| s.children().find(|n| n.is_element()))
        {
            let code = text_of(failed, "code").unwrap_or_default();
            if code.contains("NotFound") {
                return Ok(());
            }
            let msg = text_of(failed, "message").unwrap_or_default();
            return Err(AwsError::new(
                AwsErrorKind::Other,
                Some(code.clone()),
                format!(
                    "DeleteLaunchTemplateVersions {template_id} version {number}: {code}: {msg}"
                ),
            ));
        }
        Ok(())
    }

    async fn call(&self, action: &str, params: Vec<(String, String)>) -> Result<String, AwsError> {
        let mut form = vec![
            ("Action".to_string(), action.to_string()),
            ("Version".to_string(), API_VERSION.to_string()),
        ];
        form.extend(params);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut headers = vec![("content-type".to_string(), content_type.to_string())];
        headers.extend(self.sign(&body, content_type).await?);
        let mut req = self.http.post(&self.endpoint).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| {
            let kind = if e.is_connect() || e.is_timeout() {
                AwsErrorKind::Unreachable
            } else {
                AwsErrorKind::Other
            };
            AwsError::caused(kind, format!("EC2 {action} at {}", self.endpoint), e)
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            AwsError::caused(
                AwsErrorKind::Unreachable,
                format!("EC2 {action}: reading the answer"),
                e,
            )
        })?;
        if status.is_success() {
            return Ok(text);
        }
        let (code, message) = match roxmltree::Document::parse(&text) {
            Ok(doc) => (
                doc.descendants()
                    .find(|n| n.has_tag_name("Code"))
                    .and_then(|n| n.text())
                    .unwrap_or_default()
                    .to_string(),
                doc.descendants()
                    .find(|n| n.has_tag_name("Message"))
                    .and_then(|n| n.text())
                    .unwrap_or_default()
                    .to_string(),
            ),
            Err(_) => (
                String::new(),
                "the answer is not an EC2 error document (does this endpoint implement the action?)".into(),
            ),
        };
        let what = if code.is_empty() {
            message
        } else {
            format!("{code}: {message}")
        };
        Err(AwsError::from_code(
            Some(code),
            format!("EC2 {action} at {}: HTTP {status}: {what}", self.endpoint),
        ))
    }

    /// SigV4 headers for one EC2 Query request.
    async fn sign(
        &self,
        body: &str,
        content_type: &str,
    ) -> Result<Vec<(String, String)>, AwsError> {
        let Some(provider) = &self.credentials else {
            return Err(AwsError::new(
                AwsErrorKind::Credentials,
                None,
                "no AWS credentials provider is configured".into(),
            ));
        };
        let creds = provider.provide_credentials().await.map_err(|e| {
            AwsError::caused(AwsErrorKind::Credentials, "loading AWS credentials", e)
        })?;
        let identity = Identity::from(creds);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| AwsError::caused(AwsErrorKind::Other, "signing", e))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &self.endpoint,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| AwsError::caused(AwsErrorKind::Other, "signing", e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| AwsError::caused(AwsErrorKind::Other, "signing", e))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }
}

fn parse(body: &str) -> Result<roxmltree::Document<'_>, AwsError> {
    roxmltree::Document::parse(body).map_err(|e| {
        AwsError::new(
            AwsErrorKind::Other,
            None,
            format!("EC2 answered with XML that does not parse: {e}"),
        )
    })
}

fn text_of(node: roxmltree::Node, tag: &str) -> Option<String> {
    node.children()
        .find(|n| n.has_tag_name(tag))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_string())
}

fn version_from_xml(item: roxmltree::Node) -> Result<TemplateVersion, AwsError> {
    let number = text_of(item, "versionNumber")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            AwsError::new(
                AwsErrorKind::Other,
                None,
                "DescribeLaunchTemplateVersions answered without a versionNumber".into(),
            )
        })?;
    let data = item
        .children()
        .find(|n| n.has_tag_name("launchTemplateData"));
    let mut params = data.map(data_to_params).unwrap_or_default();
    let user_data = params
        .iter()
        .position(|(k, _)| k == "LaunchTemplateData.UserData")
        .map(|i| params.remove(i).1);
    Ok(TemplateVersion {
        template_id: text_of(item, "launchTemplateId").unwrap_or_default(),
        template_name: text_of(item, "launchTemplateName").unwrap_or_default(),
        number,
        is_default: text_of(item, "defaultVersion").as_deref() == Some("true"),
        params,
        user_data,
    })
}

/// Response fields the request does not accept (state the service reports).
const RESPONSE_ONLY: &[(&str, &str)] = &[
    ("metadataOptions", "state"),
    ("operator", "managed"),
    ("operator", "hiddenByDefault"),
    ("ipv6AddressesSet", "isPrimaryIpv6"),
];

/// Where the request's name is not the response's name by the general rule, per the EC2
/// API model: (parent element, element) → request name.
const RENAMED: &[(&str, &str, &str)] = &[
    ("networkInterfaceSet", "groupSet", "SecurityGroupId"),
    ("launchTemplateData", "licenseSet", "LicenseSpecification"),
    (
        "secondaryInterfaceSet",
        "privateIpAddressesSet",
        "PrivateIpAddress",
    ),
];

/// Turns a `<launchTemplateData>` element into `LaunchTemplateData.*` parameters.
pub(crate) fn data_to_params(data: roxmltree::Node) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chain = vec!["launchTemplateData"];
    fields(data, "LaunchTemplateData", &mut chain, &mut out);
    out
}

fn request_name(parent: &str, tag: &str) -> String {
    if let Some((_, _, n)) = RENAMED.iter().find(|(p, t, _)| *p == parent && *t == tag) {
        return n.to_string();
    }
    let base = tag.strip_suffix("Set").unwrap_or(tag);
    let mut c = base.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// `chain` holds the element names down to `node`, list items left out, so the rename
/// and response-only tables can look at the nearest named parent.
fn fields<'a>(
    node: roxmltree::Node<'a, 'a>,
    prefix: &str,
    chain: &mut Vec<&'a str>,
    out: &mut Vec<(String, String)>,
) {
    let parent = *chain.last().unwrap_or(&"");
    for child in node.children().filter(|n| n.is_element()) {
        let tag = child.tag_name().name();
        if RESPONSE_ONLY.iter().any(|(p, t)| *p == parent && *t == tag) {
            continue;
        }
        let name = format!("{prefix}.{}", request_name(parent, tag));
        chain.push(tag);
        if tag.ends_with("Set") {
            for (i, item) in child.children().filter(|n| n.is_element()).enumerate() {
                let item_name = format!("{name}.{}", i + 1);
                if item.children().any(|n| n.is_element()) {
                    fields(item, &item_name, chain, out);
                } else if let Some(t) = item.text() {
                    out.push((item_name, t.trim().to_string()));
                }
            }
        } else if child.children().any(|n| n.is_element()) {
            fields(child, &name, chain, out);
        } else if let Some(t) = child.text() {
            out.push((name, t.trim().to_string()));
        }
        chain.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeLaunchTemplateVersionsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>x</requestId>
  <launchTemplateVersionSet>
    <item>
      <createTime>2026-11-28T00:00:00.000Z</createTime>
      <defaultVersion>true</defaultVersion>
      <launchTemplateData>
        <blockDeviceMappingSet>
          <item>
            <deviceName>/dev/sda1</deviceName>
            <ebs><deleteOnTermination>true</deleteOnTermination><volumeSize>100</volumeSize><volumeType>gp3</volumeType></ebs>
          </item>
        </blockDeviceMappingSet>
        <iamInstanceProfile><arn>arn:aws:iam::1:instance-profile/nomad</arn></iamInstanceProfile>
        <imageId>ami-12345678</imageId>
        <instanceType>m5.2xlarge</instanceType>
        <keyName>ops</keyName>
        <metadataOptions><httpTokens>required</httpTokens><state>applied</state><httpPutResponseHopLimit>2</httpPutResponseHopLimit></metadataOptions>
        <monitoring><enabled>true</enabled></monitoring>
        <networkInterfaceSet>
          <item>
            <associatePublicIpAddress>false</associatePublicIpAddress>
            <deviceIndex>0</deviceIndex>
            <groupSet><groupId>sg-1</groupId><groupId>sg-2</groupId></groupSet>
            <ipv6AddressesSet><item><ipv6Address>fd00::1</ipv6Address><isPrimaryIpv6>true</isPrimaryIpv6></item></ipv6AddressesSet>
            <privateIpAddressesSet><item><primary>true</primary><privateIpAddress>10.0.0.5</privateIpAddress></item></privateIpAddressesSet>
            <subnetId>subnet-1</subnetId>
          </item>
        </networkInterfaceSet>
        <licenseSet><item><licenseConfigurationArn>arn:lic</licenseConfigurationArn></item></licenseSet>
        <securityGroupIdSet/>
        <tagSpecificationSet>
          <item><resourceType>instance</resourceType><tagSet><item><key>Name</key><value>nomad client</value></item></tagSet></item>
        </tagSpecificationSet>
        <userData>IyEvYmluL2Jhc2gK</userData>
      </launchTemplateData>
      <launchTemplateId>lt-0abc</launchTemplateId>
      <launchTemplateName>circleci-nomad</launchTemplateName>
      <versionNumber>3</versionNumber>
    </item>
  </launchTemplateVersionSet>
</DescribeLaunchTemplateVersionsResponse>"#;

    #[test]
    fn response_data_becomes_request_parameters() {
        let doc = roxmltree::Document::parse(DESCRIBE).unwrap();
        let item = doc
            .descendants()
            .find(|n| n.has_tag_name("launchTemplateVersionSet"))
            .and_then(|s| s.children().find(|n| n.is_element()))
            .unwrap();
        let v = version_from_xml(item).unwrap();
        assert_eq!(v.number, 3);
        assert!(v.is_default);
        assert_eq!(v.template_id, "lt-0abc");
        assert_eq!(v.user_data.as_deref(), Some("IyEvYmluL2Jhc2gK"));
        let p = |k: &str| {
            v.params
                .iter()
                .find(|(n, _)| n == &format!("LaunchTemplateData.{k}"))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(p("BlockDeviceMapping.1.DeviceName"), Some("/dev/sda1"));
        assert_eq!(p("BlockDeviceMapping.1.Ebs.VolumeSize"), Some("100"));
        assert_eq!(
            p("IamInstanceProfile.Arn"),
            Some("arn:aws:iam::1:instance-profile/nomad")
        );
        assert_eq!(p("ImageId"), Some("ami-12345678"));
        assert_eq!(p("MetadataOptions.HttpTokens"), Some("required"));
        assert_eq!(p("MetadataOptions.State"), None);
        assert_eq!(p("Monitoring.Enabled"), Some("true"));
        assert_eq!(p("NetworkInterface.1.SecurityGroupId.1"), Some("sg-1"));
        assert_eq!(p("NetworkInterface.1.SecurityGroupId.2"), Some("sg-2"));
        assert_eq!(
            p("NetworkInterface.1.Ipv6Addresses.1.Ipv6Address"),
            Some("fd00::1")
        );
        assert_eq!(p("NetworkInterface.1.Ipv6Addresses.1.IsPrimaryIpv6"), None);
        assert_eq!(
            p("NetworkInterface.1.PrivateIpAddresses.1.PrivateIpAddress"),
            Some("10.0.0.5")
        );
        assert_eq!(
            p("LicenseSpecification.1.LicenseConfigurationArn"),
            Some("arn:lic")
        );
        assert_eq!(p("TagSpecification.1.Tag.1.Value"), Some("nomad client"));
        assert_eq!(p("UserData"), None, "user data is carried separately");
        assert!(v.params.iter().all(|(k, _)| !k.contains("SecurityGroupId.")
            || k.starts_with("LaunchTemplateData.NetworkInterface")));
        assert_eq!(v.params.len(), 23, "{:#?}", v.params);
    }

    #[test]
    fn names_follow_the_api_rules() {
        assert_eq!(request_name("launchTemplateData", "imageId"), "ImageId");
        assert_eq!(
            request_name("launchTemplateData", "blockDeviceMappingSet"),
            "BlockDeviceMapping"
        );
        assert_eq!(
            request_name("secondaryInterfaceSet", "privateIpAddressesSet"),
            "PrivateIpAddress"
        );
        assert_eq!(
            request_name("networkInterfaceSet", "privateIpAddressesSet"),
            "PrivateIpAddresses"
        );
    }
}
