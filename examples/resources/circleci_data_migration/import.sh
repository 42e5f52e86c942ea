# Records a migration made by other means, so that Terraform never runs it.
terraform import circleci_data_migration.this circleci-data-migration
