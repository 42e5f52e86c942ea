//! terraform-provider-circleci: started by Terraform as a plugin.

fn main() -> std::process::ExitCode {
    terraform_provider_circleci::run()
}
