# Everything this provider manages, in one configuration. `make demo` applies it
# against real servers on loopback, with config_root pointing into dev/.state so the
# files land there instead of /etc on the machine running the demo.

terraform {
  required_version = ">= 1.11"
  required_providers {
    circleci = {
      source = "circleci/circleci"
    }
  }
}

variable "services_host" {
  type        = string
  description = "Address of the CircleCI Services machine."
}

variable "services_port" {
  type    = number
  default = 22
}

variable "services_user" {
  type    = string
  default = "ubuntu"
}

variable "private_key_file" {
  type    = string
  default = "~/.ssh/id_ed25519"
}

variable "known_hosts_file" {
  type        = string
  default     = "~/.ssh/known_hosts"
  description = "A known_hosts file that lists the Services machine."
}

variable "redis_host" {
  type = string
}

variable "redis_port" {
  type    = number
  default = 6379
}

variable "slanger_redis_host" {
  type = string
}

variable "slanger_redis_port" {
  type    = number
  default = 6379
}

variable "postgres_host" {
  type        = string
  description = "PostgreSQL, as both Terraform and the Services machine reach it."
}

variable "postgres_port" {
  type    = number
  default = 5432
}

variable "postgres_admin_password" {
  type      = string
  sensitive = true
}

variable "postgres_ca_file" {
  type        = string
  description = "CA certificate that signed the PostgreSQL server's certificate."
}

variable "circle_db_password" {
  type      = string
  sensitive = true
}

variable "vault_address" {
  type        = string
  description = "Vault, as both Terraform and the Services machine reach it."
}

variable "vault_token" {
  type      = string
  sensitive = true
}

variable "vault_ca_file" {
  type = string
}

variable "rabbitmq_host" {
  type = string
}

variable "rabbitmq_port" {
  type    = number
  default = 5672
}

variable "rabbitmq_password" {
  type      = string
  sensitive = true
}

variable "nomad_endpoint" {
  type        = string
  description = "Nomad's HTTP API, e.g. https://nomad.internal:4646."
}

variable "nomad_ca_file" {
  type    = string
  default = null
}

variable "nomad_token" {
  type      = string
  sensitive = true
  default   = null
}

variable "mongo_hosts" {
  type = list(string)
}

variable "mongo_admin_uri" {
  type      = string
  sensitive = true
}

variable "mongo_password" {
  type      = string
  sensitive = true
}

variable "mongo_tls" {
  type    = bool
  default = true
}

# The CA that signed the external PostgreSQL's certificate, as a file on the Services
# machine (the restore runs there); with it the restore checks the server's identity
# (verify-full). null: TLS without that check (require), and a warning at plan.
variable "postgres_services_ca_file" {
  type    = string
  default = null
}

# The CA that signed the external MongoDB's certificate, as a file on the Services
# machine (the restore runs there); null: the CA bundle of the embedded mongo image.
variable "mongo_services_ca_file" {
  type    = string
  default = null
}

variable "aws_region" {
  type    = string
  default = "us-east-1"
}

variable "aws_endpoint" {
  type        = string
  default     = ""
  description = "Leave empty for AWS itself; the demo points it at moto."
}

variable "nomad_clients_asg" {
  type        = string
  default     = "circleci_nomad_clients_asg"
  description = "The Nomad client Auto Scaling group enterprise-setup created."
}

variable "embedded_nomad_endpoint" {
  type        = string
  default     = null
  description = "CircleCI's embedded Nomad server's HTTP API, as the Services machine reaches it. Default: http://127.0.0.1:4646. Running builds are waited for there, and its clients counted, before CircleCI stops."
}

variable "verify_timeout" {
  type        = string
  default     = null
  description = "How long the restart's runbook checks are retried after CircleCI starts (and again after a fallback). Default: 5m."
}

variable "nomad_servers" {
  type        = list(string)
  description = "The external Nomad servers' RPC addresses, host:4647."
}

variable "services_ca_files" {
  type        = map(string)
  default     = {}
  description = "CA certificates (PEM files) the Services machine must trust to reach the external services over TLS, by name."
}

variable "embedded_vault_address" {
  type        = string
  default     = null
  description = "The Services machine's embedded Vault, as the Services machine itself reaches it (the migration always goes through the Services machine for it). Default: http://127.0.0.1:8200."
}

variable "via_services_host" {
  type        = bool
  default     = false
  description = "Reach every database, Vault, Redis, RabbitMQ and Nomad through the Services machine (SSH channels), for servers only it can reach."
}

variable "embedded_vault_token" {
  type        = string
  sensitive   = true
  description = "A token of the embedded Vault that may back up the context-service key (its root token)."
}

variable "config_root" {
  type        = string
  default     = ""
  description = "Prefix for every config path. Leave empty on a real Services machine."
}

provider "circleci" {
  via_services_host = var.via_services_host
  services_host {
    host             = var.services_host
    port             = var.services_port
    user             = var.services_user
    private_key_file = var.private_key_file
    known_hosts_file = var.known_hosts_file
  }
  postgres {
    host        = var.postgres_host
    port        = var.postgres_port
    username    = "postgres"
    password    = var.postgres_admin_password
    sslmode     = "verify-full"
    sslrootcert = var.postgres_ca_file
  }
  vault {
    address      = var.vault_address
    token        = var.vault_token
    ca_cert_file = var.vault_ca_file
  }
  mongodb {
    uri = var.mongo_admin_uri
  }
  aws {
    region   = var.aws_region
    endpoint = var.aws_endpoint
  }
}

resource "circleci_external_redis" "shared" {
  host        = var.redis_host
  port        = var.redis_port
  config_path = "${var.config_root}/etc/circleconfig/shared/redis"
}

resource "circleci_external_redis" "slanger" {
  host        = var.slanger_redis_host
  port        = var.slanger_redis_port
  purpose     = "slanger"
  config_path = "${var.config_root}/etc/circleconfig/slanger/customizations"
}

resource "circleci_postgres_databases" "circle" {
  host                = var.postgres_host
  port                = var.postgres_port
  password_wo         = var.circle_db_password
  password_wo_version = 1
  config_path         = "${var.config_root}/etc/circleconfig/shared/postgresql"
}

# The embedded data, carried over before CircleCI is pointed at the external services:
# CircleCI is stopped here and stays stopped until circleci_services_restart starts it.
# The databases go into those circleci_postgres_databases made, restored as the circle
# role; MongoDB's four databases are restored as the user circleci_external_mongo made;
# the embedded Vault's context-service key moves too, so that every existing context
# secret still decrypts. The export stays on the Services machine as the backup.
resource "circleci_data_migration" "this" {
  config_root             = var.config_root == "" ? "/" : var.config_root
  embedded_nomad_endpoint = var.embedded_nomad_endpoint

  postgres {
    host        = circleci_postgres_databases.circle.host
    port        = circleci_postgres_databases.circle.port
    user        = circleci_postgres_databases.circle.user
    databases   = circleci_postgres_databases.circle.databases
    password_wo = var.circle_db_password
    sslmode     = var.postgres_services_ca_file == null ? "require" : "verify-full"
    ca_file     = var.postgres_services_ca_file
  }

  mongo {
    hosts       = circleci_external_mongo.circle.hosts
    replica_set = circleci_external_mongo.circle.replica_set
    username    = circleci_external_mongo.circle.username
    auth_source = circleci_external_mongo.circle.auth_source
    databases   = circleci_external_mongo.circle.databases
    password_wo = var.mongo_password
    tls         = circleci_external_mongo.circle.tls
    ca_file     = var.mongo_services_ca_file
  }

  vault_transit_key {
    # Always through the Services machine: the embedded Vault listens on plain HTTP,
    # and its root token and the key's backup must not cross a network in clear.
    source_address    = coalesce(var.embedded_vault_address, "http://127.0.0.1:8200")
    via_services_host = true
    source_token_wo   = var.embedded_vault_token
  }
}

# Uses the key the migration restored (it creates one only when there is none).
resource "circleci_vault_transit_client" "context_service" {
  config_path = "${var.config_root}/etc/circleconfig/context-service/customizations"

  depends_on = [circleci_data_migration.this]
}

resource "circleci_external_rabbitmq" "this" {
  host        = var.rabbitmq_host
  port        = var.rabbitmq_port
  username    = "circle"
  password_wo = var.rabbitmq_password
  config_path = "${var.config_root}/etc/circleconfig/shared/rabbitmq"
}

resource "circleci_external_nomad" "this" {
  endpoint     = var.nomad_endpoint
  ca_cert_file = var.nomad_ca_file
  acl_token_wo = var.nomad_token
  config_path  = "${var.config_root}/etc/circleconfig/shared/nomad"
}

resource "circleci_external_mongo" "circle" {
  hosts       = var.mongo_hosts
  password_wo = var.mongo_password
  tls         = var.mongo_tls
  config_path = "${var.config_root}/etc/circle-installation-customizations"
}

# The runbook's Troubleshooting: the CAs that signed the external services' certificates.
resource "circleci_services_ca_certificate" "trusted" {
  for_each        = var.services_ca_files
  name            = each.key
  certificate_pem = file(each.value)
  config_root     = var.config_root == "" ? "/" : var.config_root
}

# The clients move to the external servers while CircleCI is stopped: after the
# migration stopped it (no build runs on them then), before the restart starts it.
# With CircleCI running, the provider refuses to move them to servers it does not use,
# and to terminate them under running builds.
resource "circleci_nomad_client_launch_config" "clients" {
  autoscaling_group_name  = var.nomad_clients_asg
  nomad_servers           = var.nomad_servers
  rollout                 = "terminate"
  rollout_batch_size      = 1
  config_root             = var.config_root == "" ? "/" : var.config_root
  embedded_nomad_endpoint = var.embedded_nomad_endpoint

  depends_on = [circleci_external_nomad.this, circleci_data_migration.this]
}

# Then what ends every section of the runbook: restart CircleCI and check each service
# the way the runbook does, and that the Nomad servers it now uses have as many clients
# ready for builds as before the stop. Any config file changing restarts again.
# `terraform destroy` is the way back: CircleCI returns to how it ran before this
# cutover (its files, its clients, checked against what its checks showed then), on its
# embedded data as it was at the cutover. What it wrote to the external services since
# stays there. Without on_destroy, a destroy leaves CircleCI on the external services.
resource "circleci_services_restart" "this" {
  config_root             = var.config_root == "" ? "/" : var.config_root
  embedded_nomad_endpoint = var.embedded_nomad_endpoint
  verify_timeout          = var.verify_timeout
  on_destroy              = "go_back"
  triggers = merge(
    {
      migration       = circleci_data_migration.this.migrated_at
      redis_shared    = circleci_external_redis.shared.file_sha256
      redis_slanger   = circleci_external_redis.slanger.file_sha256
      postgresql      = circleci_postgres_databases.circle.file_sha256
      context_service = circleci_vault_transit_client.context_service.file_sha256
      rabbitmq        = circleci_external_rabbitmq.this.file_sha256
      nomad           = circleci_external_nomad.this.file_sha256
      nomad_clients   = circleci_nomad_client_launch_config.clients.launch_configuration_name
      mongo           = circleci_external_mongo.circle.file_sha256
    },
    { for k, c in circleci_services_ca_certificate.trusted : "ca_${k}" => c.fingerprint_sha256 },
  )
}


output "nomad_clients" {
  value = {
    launch_configuration = circleci_nomad_client_launch_config.clients.launch_configuration_name
    servers_before       = circleci_nomad_client_launch_config.clients.previous_servers
    replaced_instances   = circleci_nomad_client_launch_config.clients.replaced_instance_ids
  }
}

output "config_files" {
  value = {
    mongo           = circleci_external_mongo.circle.id
    nomad           = circleci_external_nomad.this.id
    rabbitmq        = circleci_external_rabbitmq.this.id
    context_service = circleci_vault_transit_client.context_service.id
    postgresql      = circleci_postgres_databases.circle.id
    redis_shared    = circleci_external_redis.shared.id
    redis_slanger   = circleci_external_redis.slanger.id
  }
}

output "migration" {
  value = {
    tables      = circleci_data_migration.this.postgres_tables
    rows        = circleci_data_migration.this.postgres_rows
    collections = circleci_data_migration.this.mongo_collections
    documents   = circleci_data_migration.this.mongo_documents
    elapsed     = circleci_data_migration.this.elapsed
    throughput  = circleci_data_migration.this.throughput
    export      = circleci_data_migration.this.export_sha256
  }
}

output "restart" {
  value = {
    version       = circleci_services_restart.this.version
    checks_passed = circleci_services_restart.this.checks
    downtime      = circleci_services_restart.this.downtime
    restarted_at  = circleci_services_restart.this.restarted_at
  }
}
