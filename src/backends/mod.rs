//! One module per external system. Nothing in here knows about Terraform.

pub mod postgres;
pub mod redis;
pub mod ssh;
pub mod vault;
