# The import ID is the Auto Scaling group's name. The configuration the group used before
# is not known after import, so destroy leaves the group on its current configuration.
terraform import circleci_nomad_client_launch_config.clients circleci_nomad_clients_asg
