# The Redis every CircleCI service shares: /etc/circleconfig/shared/redis
resource "circleci_external_redis" "shared" {
  host = "redis.internal"
  port = 6379
}

# A separate Redis for Slanger, as the runbook recommends:
# /etc/circleconfig/slanger/customizations
resource "circleci_external_redis" "slanger" {
  host    = "slanger-redis.internal"
  purpose = "slanger"
}
