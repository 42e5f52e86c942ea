# The import ID is the config file's path on the Services machine.
terraform import circleci_external_redis.shared /etc/circleconfig/shared/redis
terraform import circleci_external_redis.slanger /etc/circleconfig/slanger/customizations
