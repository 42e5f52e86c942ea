//! The Terraform plugin protocol (go-plugin handshake, tfplugin6 over gRPC) and nothing
//! about CircleCI. This is the only module that sees tonic or protobuf types.

mod convert;
pub mod diag;
pub mod goplugin_services;
pub mod grpc;
pub mod resource;
pub mod schema;
pub mod server;
pub mod stop;
pub mod value;

/// Generated from proto/tfplugin6.proto.
#[allow(clippy::all, clippy::pedantic, dead_code)]
pub(crate) mod tfplugin6 {
    tonic::include_proto!("tfplugin6");
}

/// Generated from proto/grpc_controller.proto and proto/grpc_stdio.proto.
#[allow(clippy::all, clippy::pedantic, dead_code)]
pub(crate) mod goplugin {
    tonic::include_proto!("plugin");
}

pub use diag::{AttrPath, Diagnostic, Diagnostics};
pub use resource::{Applied, ClientInfo, PlanRequest, Provider, Resource};
pub use schema::{Attribute, Block, NestedBlock, Nesting, Schema, Type};
pub use server::{serve, HandshakeEnv};
pub use value::Value;
