variable "rabbitmq_password" {
  type      = string
  sensitive = true
}

# /etc/circleconfig/shared/rabbitmq, written only after an AMQP login with these
# credentials succeeded.
resource "circleci_external_rabbitmq" "this" {
  host                = "mq.internal"
  port                = 5672
  username            = "circle"
  password_wo         = var.rabbitmq_password # write-only: never in the state
  password_wo_version = 1                     # bump to rewrite the file after a change
}
