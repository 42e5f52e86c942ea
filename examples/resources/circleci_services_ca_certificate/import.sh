# By the certificate's path on the Services machine.
terraform import circleci_services_ca_certificate.internal /usr/local/share/ca-certificates/internal-ca.crt
