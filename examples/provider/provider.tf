terraform {
  required_version = ">= 1.11"
  required_providers {
    circleci = {
      source = "circleci/circleci"
    }
  }
}

# The Services machine of the CircleCI Server 2.17 install, reached over SSH.
provider "circleci" {
  # The databases sit in a network only the Services machine reaches: every connection
  # and check goes through it (SSH direct-tcpip channels; names resolved there).
  via_services_host = true

  services_host {
    host             = "10.0.1.5"          # or env CIRCLECI_SERVICES_HOST
    port             = 22                  # or env CIRCLECI_SERVICES_PORT
    user             = "ubuntu"            # or env CIRCLECI_SERVICES_USER
    private_key_file = "~/.ssh/id_ed25519" # or private_key; neither: ssh-agent
    host_key         = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJc9zr8I8mO4FA3ZgGgVHV8WNk6WgWATmaVzZMBIPbNn"
    sudo             = true # write /etc/circleconfig as root via sudo -n
    timeout          = "30s"
  }

  # The PostgreSQL administrator used to create the role and databases.
  postgres {
    host        = "db.internal" # or env PGHOST
    port        = 5432
    username    = "postgres"
    password    = var.postgres_admin_password # or env PGPASSWORD
    sslmode     = "verify-full"
    sslrootcert = "/etc/ssl/certs/db-ca.pem"
  }

  # The Vault (or OpenBao) that holds the transit key for contexts.
  vault {
    address      = "https://vault.internal:8200" # or env VAULT_ADDR
    token        = var.vault_admin_token         # or env VAULT_TOKEN
    ca_cert_file = "/etc/ssl/certs/vault-ca.pem" # or env VAULT_CACERT
  }

  # A MongoDB user that may manage users, for circleci_external_mongo.
  mongodb {
    uri         = var.mongodb_admin_uri # or env MONGODB_URI
    tls_ca_file = "/etc/ssl/certs/mongo-ca.pem"
  }

  # AWS, for circleci_nomad_client_launch_config. Credentials come from the standard
  # chain: env AWS_ACCESS_KEY_ID/..., the profile (SSO too), or the instance role.
  aws {
    region  = "us-east-1" # or env AWS_REGION
    profile = "ops"       # or env AWS_PROFILE
    # endpoint = "https://vpce-0123.autoscaling.us-east-1.vpce.amazonaws.com" # private endpoints, tests
  }
}

variable "mongodb_admin_uri" {
  type      = string
  sensitive = true
}

variable "vault_admin_token" {
  type      = string
  sensitive = true
}

variable "postgres_admin_password" {
  type      = string
  sensitive = true
}
