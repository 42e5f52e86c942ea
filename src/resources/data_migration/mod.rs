//! `circleci_data_migration` (in progress): carrying the embedded PostgreSQL, MongoDB
//! and Vault transit key over to the external services. The pieces land first, each
//! tested against the Services-machine simulator; the resource follows.

pub mod embedded_postgres;
