# The runbook's Vault set-up for the context service: key `context-service` in the
# `transit` engine, policy `context-service_policy`, an orphan periodic token (168h),
# and /etc/circleconfig/context-service/customizations on the Services machine.
# The token goes from Vault straight into that file: it is never in the state.
resource "circleci_vault_transit_client" "context_service" {
  address_for_services = "https://vault.internal:8200" # as the Services machine reaches Vault
  token_renew_before   = "72h"                         # refresh renews the token below this
}
