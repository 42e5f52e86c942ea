//! The Services machine's TCP connection, acknowledging each segment at once.
//!
//! sshd turns Nagle's algorithm off only for interactive sessions. On ours it holds
//! a small packet back until the last one is acknowledged; when that last one needed
//! no answer (an `SSH_MSG_DEBUG` after the login, a command's exit status before its
//! EOF and close), Linux delays the acknowledgement by up to 40 ms, and the packet
//! the provider waits for waits with it: a plan's critical path paid it after the
//! login and on each command. `TCP_QUICKACK` acknowledges at once, but Linux clears it
//! again on its own, so it is set anew after every read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream that sets `TCP_QUICKACK` after each read (Linux; elsewhere a plain
/// stream).
pub(super) struct QuickAck(pub(super) TcpStream);

impl QuickAck {
    fn rearm(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // Best effort: a failure costs only the delay this avoids.
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.rearm();
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
