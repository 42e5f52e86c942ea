# The runbook's Troubleshooting: CircleCI trusts the CA that signed the external
# services' certificates once it is in /usr/local/share/ca-certificates, and resolves
# their names with JVM_OPTS='-Djdk.tls.trustNameService=true' in /etc/environment.
resource "circleci_services_ca_certificate" "internal" {
  name                   = "internal-ca"
  certificate_pem        = file("${path.module}/internal-ca.pem")
  jvm_trust_name_service = true
}
