//! The Terraform plugin protocol (go-plugin handshake, tfplugin6 over gRPC) and nothing
//! about CircleCI. This is the only module that sees tonic or protobuf types.

mod convert;
pub(crate) mod diag;
pub(crate) mod goplugin_services;
pub(crate) mod grpc;
pub(crate) mod resource;
pub(crate) mod schema;
pub(crate) mod server;
pub(crate) mod stop;
pub(crate) mod value;

/// Generated from proto/tfplugin6.proto.
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    unreachable_pub,
    missing_docs
)]
pub(crate) mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

/// Generated from proto/grpc_controller.proto and proto/grpc_stdio.proto.
#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    unreachable_pub,
    missing_docs
)]
pub(crate) mod goplugin {
    tonic::include_proto!("plugin");
}

pub(crate) use diag::{AttrPath, Diagnostic, Diagnostics};
pub use resource::Provider;
pub(crate) use resource::{Applied, ClientInfo, PlanRequest, Resource};
pub(crate) use schema::{Attribute, Block, NestedBlock, Nesting, Schema, Type};
pub(crate) use server::{serve, HandshakeEnv};
pub(crate) use value::Value;
