//! A TCP proxy the simulator puts on a link between two processes (a city
//! node and the gateway), to cut it or slow it down on command. It relays
//! bytes and knows nothing of TLS or gRPC, so mutual TLS runs end to end
//! through it.
//!
//! - [`Mode::Pass`] relays at once.
//! - [`Mode::Delay`] holds every chunk for the given time before relaying it,
//!   each way, keeping order.
//! - [`Mode::Cut`] is a partition: bytes on open connections are dropped and
//!   new connections are accepted and then hear nothing, as when a network
//!   silently loses packets. When the cut heals, the connections it held are
//!   closed, so both sides see a reset and reconnect.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Cut,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on `listener` and relays to `upstream`.
    pub fn start(listener: std::net::TcpListener, upstream: SocketAddr) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let task = tokio::spawn(accept(listener, upstream, rx));
        Ok(Self { addr, mode, task })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = inbound.set_nodelay(true);
        tokio::spawn(connection(inbound, upstream, mode.clone()));
    }
}

/// One relayed connection, until either side closes or a cut heals.
async fn connection(inbound: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let cut_at_start = *mode.borrow() == Mode::Cut;
    if cut_at_start {
        // Accepted, then silence until the cut heals; then closed.
        let _ = mode.wait_for(|m| *m != Mode::Cut).await;
        return;
    }
    let Ok(outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = outbound.set_nodelay(true);
    let (ir, iw) = inbound.into_split();
    let (or, ow) = outbound.into_split();
    let up = relay(ir, ow, mode.clone());
    let down = relay(or, iw, mode.clone());
    let was_cut = async {
        // Wait for a cut, then for it to heal: the connection dies with it.
        let _ = mode.wait_for(|m| *m == Mode::Cut).await;
        let _ = mode.wait_for(|m| *m != Mode::Cut).await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = was_cut => {}
    }
}

/// Copies one direction, holding each chunk as the mode says.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = match *mode.borrow() {
                Mode::Pass => Instant::now(),
                Mode::Delay(d) => Instant::now() + d,
                Mode::Cut => continue,
            };
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn passes_delays_cuts_and_heals() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            upstream,
        )
        .unwrap();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(
            round_trip(&mut s, b"hello").await.as_deref(),
            Some(&b"hello"[..])
        );

        proxy.set(Mode::Delay(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        assert_eq!(
            round_trip(&mut s, b"slow").await.as_deref(),
            Some(&b"slow"[..])
        );
        // Held each way: at least twice the delay.
        assert!(started.elapsed() >= Duration::from_millis(200));

        proxy.set(Mode::Cut);
        assert_eq!(round_trip(&mut s, b"lost").await, None);
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(round_trip(&mut fresh, b"lost too").await, None);

        proxy.set(Mode::Pass);
        // The cut's connections are closed when it heals; new ones work.
        let mut buf = [0u8; 8];
        let closed = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        let mut again = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(
            round_trip(&mut again, b"back").await.as_deref(),
            Some(&b"back"[..])
        );
    }
}
