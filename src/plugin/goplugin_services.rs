//! go-plugin's own services beside tfplugin6: the controller (Shutdown) and the stdio
//! mirror.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::goplugin;

type Rpc<T> = Result<Response<T>, Status>;

/// go-plugin's controller: Shutdown ends the process cleanly.
pub(crate) struct Controller {
    pub shutdown: tokio::sync::mpsc::Sender<()>,
}

#[tonic::async_trait]
impl goplugin::grpc_controller_server::GrpcController for Controller {
    async fn shutdown(&self, _: Request<goplugin::Empty>) -> Rpc<goplugin::Empty> {
        log::debug!("GRPCController.Shutdown received");
        let _ = self.shutdown.try_send(());
        Ok(Response::new(goplugin::Empty {}))
    }
}

/// go-plugin's stdio mirror. Our stdout carries nothing after the handshake and logs
/// go straight to stderr, so the stream stays open and empty until shutdown.
pub(crate) struct Stdio;

type StdioStream = Pin<Box<dyn Stream<Item = Result<goplugin::StdioData, Status>> + Send>>;

#[tonic::async_trait]
impl goplugin::grpc_stdio_server::GrpcStdio for Stdio {
    type StreamStdioStream = StdioStream;

    async fn stream_stdio(&self, _: Request<()>) -> Rpc<Self::StreamStdioStream> {
        Ok(Response::new(Box::pin(tokio_stream::pending())))
    }
}
