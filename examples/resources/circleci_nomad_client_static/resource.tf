variable "nomad_token" {
  type      = string
  sensitive = true
  default   = null
}

resource "circleci_external_nomad" "this" {
  endpoint     = "https://nomad.internal:4646"
  ca_cert_file = "/etc/ssl/certs/nomad-ca.pem"
  acl_token_wo = var.nomad_token
}

# The Nomad clients of a static installation: each one's /etc/nomad/config.hcl gets
# the external servers (only the servers list changes), then `systemctl restart nomad`,
# two machines at a time, each seen ready again before the next pair.
resource "circleci_nomad_client_static" "fleet" {
  nomad_servers  = ["nomad-1.internal:4647", "nomad-2.internal:4647", "nomad-3.internal:4647"]
  batch_size     = 2
  nomad_endpoint = circleci_external_nomad.this.endpoint
  nomad_ca_file  = "/etc/ssl/certs/nomad-ca.pem"
  nomad_token_wo = var.nomad_token # reads /v1/nodes; never stored

  client {
    host     = "10.0.2.11"
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDl+0eBujHTqeWhfcrCSql6Ef26RenplDpFTx76ezc2L"
  }
  client {
    host     = "10.0.2.12"
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKlSkw7MwwIih9n1ubRwh+tJzTtFMLSVnNEpbmrdDtUc"
  }
  client {
    host        = "10.0.2.13"
    host_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHxc6goO/3vd4zF3l6XRB+Zoj7SvFBmlsvhfcePYBpHO"
    node_name   = "nomad-client-legacy" # its node is not named after its address
    config_path = "/etc/nomad.d/client.hcl"
  }
}
