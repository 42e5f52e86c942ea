# The import ID is the config file's path on the Services machine; the token in the
# file identifies the token's accessor and policy in Vault.
terraform import circleci_vault_transit_client.context_service /etc/circleconfig/context-service/customizations
