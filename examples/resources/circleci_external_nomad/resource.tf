variable "nomad_token" {
  type      = string
  sensitive = true
  default   = null
}

# /etc/circleconfig/shared/nomad, written only when the cluster has a leader.
resource "circleci_external_nomad" "this" {
  endpoint     = "https://nomad.internal:4646"
  ca_cert_file = "/etc/ssl/certs/nomad-ca.pem"
  acl_token_wo = var.nomad_token # only for the check; never stored
}
