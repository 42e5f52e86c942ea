# The runbook's "Nomad Clients" step: copy the Nomad client Auto Scaling group's launch
# configuration with the external servers in its user_data, switch the group to the
# copy, and replace the running clients one at a time.
resource "circleci_nomad_client_launch_config" "clients" {
  autoscaling_group_name = "circleci_nomad_clients_asg" # enterprise-setup: <prefix>_nomad_clients_asg
  nomad_servers = [
    "nomad-1.internal:4647",
    "nomad-2.internal:4647",
    "nomad-3.internal:4647",
  ]
  name_prefix        = "circleci-nomad-clients-"
  rollout            = "terminate" # or "none": switch the group only
  rollout_batch_size = 1
  rollout_timeout    = "20m"
  restore_on_destroy = true # destroy points the group back at the original
}

# What the group used before, for the record.
output "nomad_servers_before" {
  value = circleci_nomad_client_launch_config.clients.previous_servers
}
