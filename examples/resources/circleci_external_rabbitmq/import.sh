# The import ID is the config file's path on the Services machine.
terraform import circleci_external_rabbitmq.this /etc/circleconfig/shared/rabbitmq
