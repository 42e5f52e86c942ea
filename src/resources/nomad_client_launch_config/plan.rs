//! The plan side of the resource: schema, validation, and what a plan shows.

use super::*;

pub(super) fn schema_block() -> Block {
    let s = |n: &str| Attribute::new(n, Type::String);
    Block::new()
        .description(
            "Points the Nomad clients at the external Nomad servers (runbook: *Nomad Clients*, AWS \
             installations). Reads the Auto Scaling group's launch configuration, rewrites only the Nomad \
             `servers = [...]` list (or `server_join { retry_join = [...] }`) inside the `client { ... }` block of \
             its user_data, creates a copy with every other field unchanged, points the group at the copy, then \
             replaces the running clients batch by batch so new ones start with the new servers. Groups that use \
             a launch template get a new template version instead. The plan shows the servers the group's \
             configuration names now (`previous_servers`) next to `nomad_servers`; if that configuration changes \
             between plan and apply, the apply stops before changing anything. Destroying it points the group \
             back at the original and deletes the copy.",
        )
        .attr(s("id").computed().description("The Auto Scaling group's name."))
        .attr(s("autoscaling_group_name").required().description(
            "Name of the Nomad client Auto Scaling group; enterprise-setup names it `<prefix>_nomad_clients_asg` \
             (`circleci_nomad_clients_asg` by default). Changing it replaces the resource.",
        ))
        .attr(Attribute::new("nomad_servers", Type::list(Type::String)).required().description(
            "The external Nomad servers as the clients reach them, `host:port` (RPC port, normally 4647), \
             e.g. `[\"nomad-1.internal:4647\"]`. Written into the user_data in place of the old list.",
        ))
        .attr(s("name_prefix").optional().computed().description(
            "Start of the copy's name; a timestamp and random digits are appended. Default \
             `circleci-nomad-clients-`. At most 230 characters. Changing it names the next copy only.",
        ))
        .attr(s("rollout").optional().computed().description(
            "`terminate` (default): after switching the group, terminate the instances that run the old \
             configuration, batch by batch, and wait for their replacements to be InService (the runbook's \
             step 4). `none`: switch only; instances pick up the new servers when they are next replaced.",
        ))
        .attr(Attribute::new("rollout_batch_size", Type::Number).optional().computed().description(
            "How many instances to terminate at a time. Default `1`.",
        ))
        .attr(s("rollout_timeout").optional().computed().description(
            "Time allowed for the whole rollout, e.g. `20m` (default); waiting for a client's builds with \
             CircleCI running counts against `builds_timeout` instead. When it runs out the apply fails and the \
             group keeps the new configuration. After an update, `pending_instance_ids` lists the instances \
             not yet replaced and the next apply replaces them; after a create, Terraform marks the resource \
             tainted and the next apply starts over (the original is restored first).",
        ))
        .attr(s("config_root").optional().computed().description(
            "Prefix of the Services machine's paths (for tests and chroots). Default `/`. Before the group is \
             switched (and on destroy, before it is switched back), the Services machine says whether CircleCI \
             runs (`replicatedctl app status`) and on which Nomad (`/etc/circleconfig/shared/nomad` under this \
             root as CircleCI last started with it; else its embedded Nomad). While CircleCI runs, the clients \
             may only be pointed at servers of that Nomad (`/v1/status/peers`, asked through the Services \
             machine), and `rollout = \"terminate\"` drains each client first (see `builds_timeout`). With \
             CircleCI stopped (inside the cutover, as in `examples/complete`) nothing runs on them: they are \
             replaced at once. The provider needs `services_host` for this.",
        ))
        .attr(crate::resources::cutover::embedded_nomad_attr())
        .attr(s("builds_timeout").optional().computed().description(&format!(
            "With CircleCI running and `rollout = \"terminate\"`: how long the builds on one client may take to \
             end before it is terminated (default `{}`). Each instance is found among the nodes of the Nomad \
             CircleCI uses by its AWS fingerprint (`unique.platform.aws.instance-id`; the apply is refused, \
             before anything changes, when some node lacks it and an instance matches none). Before Nomad 0.8 \
             the rollout waits until the node runs no build, then drains it (`POST \
             /v1/node/:id/drain?enable=true`, which would stop what runs) and terminates the instance; from 0.8 \
             it drains first (`DrainSpec`, its deadline an hour past this) and waits for the builds. Past it the \
             rollout stops naming the builds, the drain is lifted and that instance is left running \
             (`pending_instance_ids`). An instance the Nomad does not list runs none of CircleCI's builds and is \
             replaced without a wait.",
            crate::resources::cutover::BUILDS_TIMEOUT
        )))
        .attr(Attribute::new("restore_on_destroy", Type::Bool).optional().computed().description(
            "On destroy, point the group back at the original configuration (if it still exists) and delete \
             the copy. A copy some group still uses is never deleted. Default `true`; `false` leaves the group \
             as it is.",
        ))
        .attr(s("launch_configuration_name").computed().description(
            "Name of the copy the group now uses (empty for a launch template group).",
        ))
        .attr(s("launch_template_id").computed().description(
            "The group's launch template (empty for a launch configuration group).",
        ))
        .attr(s("launch_template_version").computed().description(
            "The template version this resource created and the group now uses (empty for a launch \
             configuration group). It becomes the template's latest version, so other groups that launch \
             from the same template at `$Latest` get the new servers too until it is deleted.",
        ))
        .attr(s("original_launch_configuration_name").computed().description(
            "The launch configuration the group used before; destroy restores it. Empty after import.",
        ))
        .attr(s("original_launch_template_version").computed().description(
            "The template version (`3`, `$Latest`, `$Default`) the group used before; destroy restores it.",
        ))
        .attr(Attribute::new("previous_servers", Type::list(Type::String)).computed().description(
            "The Nomad servers list the group's configuration held before the last change.",
        ))
        .attr(s("user_data_sha256").computed().description(
            "SHA-256 of the copy's decoded user_data; refresh compares it with AWS.",
        ))
        .attr(Attribute::new("replaced_instance_ids", Type::list(Type::String)).computed().description(
            "Instances the last rollout terminated.",
        ))
        .attr(Attribute::new("pending_instance_ids", Type::list(Type::String)).computed().description(
            "Instances still running the previous configuration after a rollout failed or timed out; the next \
             apply replaces them.",
        ))
        .attr(s("drift").computed().description(
            "What refresh found changed outside Terraform (the group pointed elsewhere, the copy deleted); empty \
             when nothing. A non-empty value plans an update that makes a new copy.",
        ))
}

pub(super) fn validate(config: &Value) -> Diagnostics {
    let mut diags = Diagnostics::new();
    if let Some(n) = config.get("autoscaling_group_name").as_str() {
        if n.is_empty() || n.len() > MAX_NAME || n.chars().any(char::is_control) {
            diags.attr_error(
                group_attr(),
                "Invalid Auto Scaling group name",
                "must be 1-255 characters without control characters",
            );
        }
    }
    if let Some(items) = config.get("nomad_servers").as_list() {
        if items.is_empty() {
            diags.attr_error(
                AttrPath::root("nomad_servers"),
                "No Nomad servers",
                "list at least one server, e.g. [\"nomad-1.internal:4647\"]",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, v) in items.iter().enumerate() {
            let at = AttrPath::root("nomad_servers").index(i);
            match v.as_str() {
                Some(s) => {
                    if let Err(e) = ud::check_server(s) {
                        diags.attr_error(at, "Invalid Nomad server address", e);
                    } else if !seen.insert(s.to_string()) {
                        diags.attr_error(
                            at,
                            "Duplicate Nomad server",
                            format!("{s:?} is listed twice"),
                        );
                    }
                }
                None if v.is_null() => {
                    diags.attr_error(at, "Invalid Nomad server address", "must not be null")
                }
                None => {}
            }
        }
    }
    if let Some(p) = config.get("name_prefix").as_str() {
        if p.len() > MAX_NAME - SUFFIX_LEN || p.chars().any(char::is_control) {
            diags.attr_error(
                AttrPath::root("name_prefix"),
                "Invalid name_prefix",
                format!(
                    "must be at most {} characters without control characters (a {SUFFIX_LEN}-character \
                     suffix is appended and names are limited to {MAX_NAME})",
                    MAX_NAME - SUFFIX_LEN
                ),
            );
        }
    }
    if let Some(r) = config.get("rollout").as_str() {
        if r != "none" && r != "terminate" {
            diags.attr_error(
                AttrPath::root("rollout"),
                "Invalid rollout",
                format!("{r:?} is not one of none, terminate"),
            );
        }
    }
    let b = config.get("rollout_batch_size");
    if !b.is_null() && !b.is_unknown() {
        match b.as_i64() {
            Some(n) if n >= 1 => {}
            _ => diags.attr_error(
                AttrPath::root("rollout_batch_size"),
                "Invalid rollout_batch_size",
                "must be a whole number of at least 1",
            ),
        }
    }
    let max_secs = MAX_ROLLOUT.as_secs();
    let timeout = crate::resources::validate::Check::Duration {
        min_secs: 1,
        max_secs,
    };
    crate::resources::validate::run(
        config,
        &[
            ("rollout_timeout", timeout),
            ("config_root", crate::resources::validate::Check::RemotePath),
            (
                "builds_timeout",
                crate::resources::validate::Check::Duration {
                    min_secs: 1,
                    max_secs: 7 * 86_400,
                },
            ),
        ],
        &mut diags,
    );
    crate::resources::cutover::validate(config, &mut diags);
    diags
}

impl NomadClientLaunchConfig {
    pub(super) async fn plan_change(
        &self,
        req: &PlanRequest<'_>,
        planned: &mut Value,
        diags: &mut Diagnostics,
    ) -> Vec<AttrPath> {
        crate::resources::set_defaults(
            req.config,
            planned,
            [
                ("name_prefix", Value::string(DEFAULT_PREFIX)),
                ("rollout", Value::string("terminate")),
                ("rollout_batch_size", Value::int(1)),
                ("rollout_timeout", Value::string("20m")),
                ("restore_on_destroy", Value::Bool(true)),
                ("config_root", Value::string("/")),
                (
                    "builds_timeout",
                    Value::string(crate::resources::cutover::BUILDS_TIMEOUT),
                ),
                (
                    "embedded_nomad_endpoint",
                    Value::string(crate::resources::cutover::DEFAULT_EMBEDDED_NOMAD),
                ),
            ],
        );
        planned.set("id", planned.get("autoscaling_group_name").clone());
        planned.set("drift", Value::string(""));
        let fresh = [
            "launch_configuration_name",
            "launch_template_id",
            "launch_template_version",
            "original_launch_configuration_name",
            "original_launch_template_version",
            "user_data_sha256",
            "replaced_instance_ids",
            "pending_instance_ids",
        ];
        if req.is_create() {
            for a in fresh {
                planned.set(a, Value::Unknown);
            }
            planned.set("previous_servers", Value::Unknown);
            let name = planned
                .get("autoscaling_group_name")
                .as_str()
                .map(str::to_string);
            let servers = planned.get("nomad_servers");
            if let (Some(name), true) = (name, servers.is_fully_known()) {
                let servers = strings(servers);
                // previous_servers only: apply checks it is still true before changing
                // anything (a hash of the new user_data would fail Terraform's
                // consistency check instead, should the group change meanwhile).
                // A group that already names these servers is on a copy of ours being
                // replaced (a tainted resource): its destroy puts the original back
                // first, so what comes before is known only then.
                if let Some(prev) = self.preview(&name, &servers, diags).await {
                    if prev != servers {
                        planned.set("previous_servers", string_list(&prev));
                    }
                }
            }
            return vec![];
        }
        if changed(req.prior, planned, "autoscaling_group_name") {
            return vec![group_attr()];
        }
        let drifted = req
            .prior
            .get("drift")
            .as_str()
            .is_some_and(|d| !d.is_empty());
        // name_prefix only names future copies: changing it alone does not roll clients.
        let new_copy = changed(req.prior, planned, "nomad_servers") || drifted;
        if new_copy {
            for a in fresh {
                planned.set(a, Value::Unknown);
            }
            planned.set("previous_servers", req.prior.get("nomad_servers").clone());
        } else {
            let pending = strings(req.prior.get("pending_instance_ids"));
            let terminate = planned.get("rollout").as_str() == Some("terminate");
            if !pending.is_empty() && terminate {
                planned.set("pending_instance_ids", Value::Unknown);
                planned.set("replaced_instance_ids", Value::Unknown);
            }
        }
        vec![]
    }
}
