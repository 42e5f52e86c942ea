//! EC2 Auto Scaling through the official SDK: groups, launch configurations, and
//! replacing a group's instances.

use aws_sdk_autoscaling::types::{LaunchConfiguration, LaunchTemplateSpecification};
use aws_sdk_autoscaling::Client;

use super::aws::{sdk_error, AwsError};

/// A group's launch template reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TemplateRef {
    pub id: String,
    pub name: String,
    /// `"3"`, `"$Latest"` or `"$Default"`.
    pub version: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupInstance {
    pub id: String,
    /// `InService`, `Pending`, `Terminating`, ...
    pub state: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    pub name: String,
    pub launch_configuration: Option<String>,
    pub launch_template: Option<TemplateRef>,
    pub mixed_instances_policy: bool,
    pub desired_capacity: i32,
    pub instances: Vec<GroupInstance>,
}

impl Group {
    pub(crate) fn instance_ids(&self) -> Vec<String> {
        self.instances.iter().map(|i| i.id.clone()).collect()
    }
}

fn group_from(g: &aws_sdk_autoscaling::types::AutoScalingGroup) -> Group {
    Group {
        name: g.auto_scaling_group_name().unwrap_or_default().to_string(),
        launch_configuration: g
            .launch_configuration_name()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        launch_template: g.launch_template().map(|t| TemplateRef {
            id: t.launch_template_id().unwrap_or_default().to_string(),
            name: t.launch_template_name().unwrap_or_default().to_string(),
            version: t.version().unwrap_or("$Default").to_string(),
        }),
        mixed_instances_policy: g.mixed_instances_policy().is_some(),
        desired_capacity: g.desired_capacity().unwrap_or_default(),
        instances: g
            .instances()
            .iter()
            .map(|i| GroupInstance {
                id: i.instance_id().unwrap_or_default().to_string(),
                state: i
                    .lifecycle_state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
            })
            .collect(),
    }
}

fn some(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_string)
}

fn nonempty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

pub(crate) struct Autoscaling {
    client: Client,
    /// Where requests go, for messages: the endpoint, or "AWS Auto Scaling in REGION".
    at: String,
}

impl Autoscaling {
    pub(crate) fn new(client: Client, at: String) -> Self {
        Autoscaling { client, at }
    }

    fn err<E, R>(&self, op: &str, e: aws_sdk_autoscaling::error::SdkError<E, R>) -> AwsError
    where
        E: aws_sdk_autoscaling::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        sdk_error(op, &self.at, e)
    }

    /// The group, or `None` when there is no group of that name.
    pub(crate) async fn group(&self, name: &str) -> Result<Option<Group>, AwsError> {
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(name)
            .send()
            .await
            .map_err(|e| self.err("DescribeAutoScalingGroups", e))?;
        Ok(out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(name))
            .map(group_from))
    }

    /// Every group (all pages).
    pub(crate) async fn all_groups(&self) -> Result<Vec<Group>, AwsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .describe_auto_scaling_groups()
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| self.err("DescribeAutoScalingGroups", e))?;
            out.extend(page.auto_scaling_groups().iter().map(group_from));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// Names of the groups that use this launch configuration. AWS refuses to delete one
    /// in use, but not every AWS-compatible endpoint does, so this provider asks first.
    pub(crate) async fn groups_using_launch_configuration(
        &self,
        name: &str,
    ) -> Result<Vec<String>, AwsError> {
        Ok(self
            .all_groups()
            .await?
            .into_iter()
            .filter(|g| g.launch_configuration.as_deref() == Some(name))
            .map(|g| g.name)
            .collect())
    }

    /// Names of the groups pinned to this exact template version.
    pub(crate) async fn groups_using_template_version(
        &self,
        template_id: &str,
        version: i64,
    ) -> Result<Vec<String>, AwsError> {
        let v = version.to_string();
        Ok(self
            .all_groups()
            .await?
            .into_iter()
            .filter(|g| {
                g.launch_template
                    .as_ref()
                    .is_some_and(|t| t.id == template_id && t.version == v)
            })
            .map(|g| g.name)
            .collect())
    }

    pub(crate) async fn launch_configuration(
        &self,
        name: &str,
    ) -> Result<Option<LaunchConfiguration>, AwsError> {
        let out = self
            .client
            .describe_launch_configurations()
            .launch_configuration_names(name)
            .send()
            .await
            .map_err(|e| self.err("DescribeLaunchConfigurations", e))?;
        Ok(out
            .launch_configurations()
            .iter()
            .find(|l| l.launch_configuration_name() == Some(name))
            .cloned())
    }

    /// Creates `new_name` as a copy of `source` with every field kept but the user data.
    pub(crate) async fn copy_launch_configuration(
        &self,
        source: &LaunchConfiguration,
        new_name: &str,
        user_data_b64: &str,
    ) -> Result<(), AwsError> {
        self.client
            .create_launch_configuration()
            .launch_configuration_name(new_name)
            .set_image_id(some(source.image_id()))
            .set_instance_type(some(source.instance_type()))
            .set_key_name(some(source.key_name()))
            .set_security_groups(nonempty(source.security_groups()))
            .set_classic_link_vpc_id(some(source.classic_link_vpc_id()))
            .set_classic_link_vpc_security_groups(nonempty(
                source.classic_link_vpc_security_groups(),
            ))
            .user_data(user_data_b64)
            .set_kernel_id(some(source.kernel_id()))
            .set_ramdisk_id(some(source.ramdisk_id()))
            .set_block_device_mappings(nonempty(source.block_device_mappings()))
            .set_instance_monitoring(source.instance_monitoring().cloned())
            .set_spot_price(some(source.spot_price()))
            .set_iam_instance_profile(some(source.iam_instance_profile()))
            .set_ebs_optimized(source.ebs_optimized())
            .set_associate_public_ip_address(source.associate_public_ip_address())
            .set_placement_tenancy(some(source.placement_tenancy()))
            .set_metadata_options(source.metadata_options().cloned())
            .send()
            .await
            .map_err(|e| self.err("CreateLaunchConfiguration", e))?;
        Ok(())
    }

    /// Deletes a launch configuration; one already gone is not an error.
    pub(crate) async fn delete_launch_configuration(&self, name: &str) -> Result<(), AwsError> {
        match self
            .client
            .delete_launch_configuration()
            .launch_configuration_name(name)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.err("DeleteLaunchConfiguration", e);
                if e.message.contains("not found") {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    pub(crate) async fn use_launch_configuration(
        &self,
        group: &str,
        name: &str,
    ) -> Result<(), AwsError> {
        self.client
            .update_auto_scaling_group()
            .auto_scaling_group_name(group)
            .launch_configuration_name(name)
            .send()
            .await
            .map_err(|e| self.err("UpdateAutoScalingGroup", e))?;
        Ok(())
    }

    pub(crate) async fn use_launch_template(
        &self,
        group: &str,
        template_id: &str,
        version: &str,
    ) -> Result<(), AwsError> {
        self.client
            .update_auto_scaling_group()
            .auto_scaling_group_name(group)
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id(template_id)
                    .version(version)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.err("UpdateAutoScalingGroup", e))?;
        Ok(())
    }

    /// Terminates one instance and lets the group launch its replacement.
    pub(crate) async fn replace_instance(&self, instance_id: &str) -> Result<(), AwsError> {
        self.client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(false)
            .send()
            .await
            .map_err(|e| self.err("TerminateInstanceInAutoScalingGroup", e))?;
        Ok(())
    }
}
