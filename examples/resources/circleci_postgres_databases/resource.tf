variable "circle_db_password" {
  type      = string
  sensitive = true
}

# The runbook's PostgreSQL set-up with its defaults: role `circle`, the nine
# databases, uuid-ossp everywhere and pgcrypto in `circle`, and the file
# /etc/circleconfig/shared/postgresql on the Services machine.
resource "circleci_postgres_databases" "circle" {
  host                = "db.internal"
  port                = 5432
  password_wo         = var.circle_db_password # write-only: never in the state
  password_wo_version = 1                      # bump to rotate
}
