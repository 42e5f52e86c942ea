# The restart has nothing to import but the app's version; any ID works.
terraform import circleci_services_restart.this circleci
