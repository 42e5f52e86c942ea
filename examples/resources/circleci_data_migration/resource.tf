# Carry the embedded data over before CircleCI is pointed at the external services:
# the PostgreSQL databases circleci_postgres_databases created receive the embedded
# ones, the external MongoDB receives the embedded one's four databases (restored as
# the user circleci_external_mongo created), and the external Vault receives the
# embedded Vault's context-service key, so that every existing context secret still
# decrypts. CircleCI is stopped here and left
# stopped; circleci_services_restart starts it once every file is in place.
variable "circle_db_password" {
  type      = string
  sensitive = true
}

variable "mongo_password" {
  type      = string
  sensitive = true
}

variable "embedded_vault_token" {
  type      = string
  sensitive = true
}

resource "circleci_postgres_databases" "circle" {
  host                = "postgres.internal"
  password_wo         = var.circle_db_password
  password_wo_version = 1
}

resource "circleci_external_mongo" "circle" {
  hosts       = ["mongo-0.internal:27017", "mongo-1.internal:27017", "mongo-2.internal:27017"]
  replica_set = "rs0"
  password_wo = var.mongo_password
}

resource "circleci_data_migration" "this" {
  postgres {
    host        = circleci_postgres_databases.circle.host
    port        = circleci_postgres_databases.circle.port
    user        = circleci_postgres_databases.circle.user
    password_wo = var.circle_db_password
    sslmode     = "verify-full"
    ca_file     = "/etc/ssl/postgres-ca.pem" # on the Services machine
  }

  mongo {
    hosts       = circleci_external_mongo.circle.hosts
    replica_set = circleci_external_mongo.circle.replica_set
    username    = circleci_external_mongo.circle.username
    password_wo = var.mongo_password
    ca_file     = "/etc/ssl/mongo-ca.pem" # on the Services machine
  }

  vault_transit_key {
    # The embedded Vault, on the Services machine's own loopback: its root token and
    # the key's backup never cross a network in clear.
    source_address    = "http://127.0.0.1:8200"
    via_services_host = true
    source_token_wo   = var.embedded_vault_token
  }
}

# The Vault client resource finds the key already there and uses it.
resource "circleci_vault_transit_client" "contexts" {
  depends_on = [circleci_data_migration.this]
}

resource "circleci_services_restart" "this" {
  triggers = {
    migration = circleci_data_migration.this.migrated_at
    postgres  = circleci_postgres_databases.circle.file_sha256
    mongo     = circleci_external_mongo.circle.file_sha256
    vault     = circleci_vault_transit_client.contexts.file_sha256
  }
}

output "migration" {
  value = {
    rows       = circleci_data_migration.this.postgres_rows
    documents  = circleci_data_migration.this.mongo_documents
    throughput = circleci_data_migration.this.throughput
    export     = circleci_data_migration.this.export_sha256
  }
}
