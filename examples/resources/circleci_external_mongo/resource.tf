variable "mongo_password" {
  type      = string
  sensitive = true
}

# The user `circle` with readWrite on CircleCI's four databases, and the five
# CIRCLE_SECRETS_MONGODB_*_URI exports in a managed block of
# /etc/circle-installation-customizations (the rest of that file is yours).
resource "circleci_external_mongo" "circle" {
  hosts               = ["m1.internal:27017", "m2.internal:27017", "m3.internal:27017"]
  replica_set         = "rs0"
  password_wo         = var.mongo_password # write-only: never in the state
  password_wo_version = 1
  options             = { maxIdleTimeMS = "600000" } # behind a proxy with idle timeouts
}
