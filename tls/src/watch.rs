//! Connections whose peer is checked again when the TLS files change: each
//! side (the servers' listeners, the clients made from files) keeps the
//! peer's certificate chain of every connection it has open, checks each
//! again against a new CA bundle and CRL, and cuts the connections whose
//! peer no longer passes. A cut connection fails its next read or write,
//! and the task waiting on it is woken, so it ends within moments.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use hotline_proto::identity::Identity;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Checks a connection's peer again: given what is kept of it, its end
/// certificate and the intermediates.
pub(crate) type Verify<'a> = dyn Fn(&Watched, &CertificateDer<'static>, &[CertificateDer<'static>]) -> Result<(), rustls::Error>
    + 'a;

/// What is kept of an open connection's peer: its certificate chain, the
/// name it was reached by (for a server), and whether it has been cut.
pub(crate) struct Watched {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) identity: Identity,
    pub(crate) server_name: Option<ServerName<'static>>,
    cut: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl Watched {
    pub(crate) fn new(
        chain: Vec<CertificateDer<'static>>,
        identity: Identity,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        Self {
            chain,
            identity,
            server_name,
            cut: AtomicBool::new(false),
            waker: futures::task::AtomicWaker::new(),
        }
    }

    /// Checks the peer again with `verify` (given the end certificate and
    /// the intermediates); cuts the connection if it no longer passes.
    fn recheck(&self, verify: &Verify<'_>) {
        let Some((end, intermediates)) = self.chain.split_first() else {
            return;
        };
        if let Err(e) = verify(self, end, intermediates) {
            if self.server_name.is_some() {
                tracing::warn!(server = %self.identity, error = %e, "the server of an open connection no longer passes: cut");
            } else {
                tracing::warn!(client = %self.identity, error = %e, "the client of an open connection no longer passes: cut");
            }
            self.cut.store(true, Ordering::Release);
            self.waker.wake();
        }
    }

    /// An error once the connection has been cut; the task polling it is
    /// woken when that happens.
    pub(crate) fn check_cut(&self, cx: &Context<'_>) -> io::Result<()> {
        self.waker.register(cx.waker());
        if self.cut.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer's certificate no longer passes (revoked)",
            ));
        }
        Ok(())
    }
}

/// The peers of a side's open connections.
#[derive(Default)]
pub(crate) struct OpenConnections(Mutex<Vec<Weak<Watched>>>);

impl OpenConnections {
    pub(crate) fn add(&self, watched: &Arc<Watched>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(watched));
    }

    /// Checks the peer of every connection still open with `verify`, and
    /// forgets the closed ones.
    pub(crate) fn recheck(&self, verify: &Verify<'_>) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| match w.upgrade() {
            Some(watched) => {
                watched.recheck(verify);
                true
            }
            None => false,
        });
    }
}

/// A stream that fails once its peer has been cut (if it is watched).
pub(crate) struct Cuttable<S> {
    pub(crate) inner: S,
    pub(crate) watched: Option<Arc<Watched>>,
}

impl<S> Cuttable<S> {
    fn check_cut(&self, cx: &Context<'_>) -> io::Result<()> {
        check_cut(self.watched.as_deref(), cx)
    }
}

/// An error once `watched` (if the connection is watched) has been cut.
pub(crate) fn check_cut(watched: Option<&Watched>, cx: &Context<'_>) -> io::Result<()> {
    match watched {
        Some(w) => w.check_cut(cx),
        None => Ok(()),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Cuttable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Cuttable<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_cut(cx)?;
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
