# The import ID is the config file's path on the Services machine. The databases and
# extensions are checked on the server at the next refresh. The password is not read
# back: the first apply after an import sets password_wo_version and re-applies the
# password (harmless when it is unchanged).
terraform import circleci_postgres_databases.circle /etc/circleconfig/shared/postgresql
