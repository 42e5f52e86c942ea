# The runbook's last step: restart CircleCI once every config file is in place, then
# check each externalized service the way the runbook does. Any file changing (its
# file_sha256) restarts again.
resource "circleci_services_restart" "this" {
  triggers = {
    postgres = circleci_postgres_databases.circle.file_sha256
    mongo    = circleci_external_mongo.circle.file_sha256
    vault    = circleci_vault_transit_client.contexts.file_sha256
    redis    = circleci_external_redis.shared.file_sha256
    rabbitmq = circleci_external_rabbitmq.circle.file_sha256
    nomad    = circleci_external_nomad.servers.file_sha256
  }
  stop_timeout   = "10m"
  start_timeout  = "20m"
  verify_timeout = "5m"
}

output "checks_passed" {
  value = circleci_services_restart.this.checks
}

output "downtime" {
  value = circleci_services_restart.this.downtime
}
