# The client machines, host[:port][=CONFIG_PATH], comma-separated; nomad_servers is
# read from the first one's file. Imported clients have no recorded previous list until
# an apply rolls them (their list then, kept for destroy).
terraform import circleci_nomad_client_static.fleet 10.0.2.11,10.0.2.12,10.0.2.13:22=/etc/nomad.d/client.hcl
