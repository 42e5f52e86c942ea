# The import ID is the customizations file's path; the provider's block in it is read
# back (hosts, user, options, databases). The password is not read back.
terraform import circleci_external_mongo.circle /etc/circle-installation-customizations
