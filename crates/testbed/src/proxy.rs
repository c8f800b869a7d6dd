//! A TCP proxy on loopback in front of a member's apiserver, for fault injection. Clients
//! outside the member (the operator, tests, people) reach the apiserver only through it, while
//! the member's own components talk to the apiserver directly — as in a WAN partition, where a
//! cloud's control plane keeps running but nobody outside can reach it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

use crate::error::{TestbedError, io_err};

/// What the proxy currently does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FaultState {
    /// Partitioned: open connections are dropped, new ones are accepted and then black-holed
    /// (no byte goes through) until the partition ends.
    pub cut: bool,
    /// Delay added to every chunk of data, in each direction, in milliseconds.
    pub latency_ms: u64,
}

/// A running fault proxy.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: watch::Sender<FaultState>,
}

impl FaultProxy {
    /// Binds a free loopback port and forwards it to `upstream`, running on `runtime`.
    pub fn start(runtime: &Handle, upstream: SocketAddr) -> Result<Self, TestbedError> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(io_err("binding the fault proxy"))?;
        std_listener
            .set_nonblocking(true)
            .map_err(io_err("configuring the fault proxy socket"))?;
        let addr = std_listener
            .local_addr()
            .map_err(io_err("reading the fault proxy's address"))?;
        let listener = {
            let _enter = runtime.enter();
            TcpListener::from_std(std_listener).map_err(io_err("registering the fault proxy"))?
        };
        let (state, watch_rx) = watch::channel(FaultState::default());
        runtime.spawn(accept_loop(listener, upstream, watch_rx));
        Ok(Self { addr, state })
    }

    /// The proxy's address (what kubeconfigs point at).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current fault state.
    pub fn state(&self) -> FaultState {
        *self.state.borrow()
    }

    /// Starts a partition: drops open connections and black-holes new ones.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.cut = true);
    }

    /// Ends a partition.
    pub fn restore(&self) {
        self.state.send_modify(|s| s.cut = false);
    }

    /// Sets the added latency per chunk (zero removes it).
    pub fn set_latency(&self, latency: Duration) {
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        self.state.send_modify(|s| s.latency_ms = ms);
    }
}

/// A further proxied way in to an apiserver (see [`crate::Member::open_endpoint`]): cut and
/// restored on its own. Dropping it closes the listener and every connection through it.
#[derive(Debug)]
pub struct Endpoint {
    pub(crate) proxy: FaultProxy,
    pub(crate) kubeconfig_yaml: String,
}

impl Endpoint {
    /// An admin kubeconfig that goes through this endpoint, certificates embedded.
    pub fn kubeconfig_yaml(&self) -> &str {
        &self.kubeconfig_yaml
    }

    /// The URL of this endpoint.
    pub fn server_url(&self) -> String {
        format!("https://{}", self.proxy.addr())
    }

    /// Partitions this endpoint only: its open connections drop, new ones hang.
    pub fn cut(&self) {
        self.proxy.cut();
    }

    /// Ends the partition of this endpoint.
    pub fn restore(&self) {
        self.proxy.restore();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<FaultState>,
) {
    let mut owner = state.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // The proxy was dropped: stop listening.
            _ = async { while owner.changed().await.is_ok() {} } => return,
        };
        let Ok((client, _)) = accepted else {
            // Too many open files or a similar transient error: back off a little.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            if state.borrow().cut {
                black_hole(client, state).await;
            } else {
                forward(client, upstream, state).await;
            }
        });
    }
}

/// Holds a connection without answering until the partition ends, then closes it.
async fn black_hole(client: TcpStream, mut state: watch::Receiver<FaultState>) {
    let _ = state.wait_for(|s| !s.cut).await;
    drop(client);
}

async fn forward(client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<FaultState>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, state.clone());
    let down = pump(server_read, client_write, state.clone());
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = state.wait_for(|s| s.cut) => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: watch::Receiver<FaultState>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let latency = state.borrow().latency_ms;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr, timeout: Duration) -> Result<(), &'static str> {
        let fut = async {
            let mut s = TcpStream::connect(addr).await.map_err(|_| "connect")?;
            s.write_all(b"ping").await.map_err(|_| "write")?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.map_err(|_| "read")?;
            if &buf == b"ping" {
                Ok(())
            } else {
                Err("garbled")
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| "timeout")?
    }

    #[tokio::test]
    async fn cut_black_holes_and_restore_heals() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(&Handle::current(), upstream).unwrap();
        round_trip(proxy.addr(), Duration::from_secs(2))
            .await
            .unwrap();

        // An open connection is dropped by the cut.
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();
        proxy.cut();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), open.read_to_end(&mut rest))
            .await
            .expect("the cut closes open connections");
        assert_eq!(n.unwrap_or(0), 0);

        assert_eq!(
            round_trip(proxy.addr(), Duration::from_millis(300)).await,
            Err("timeout")
        );
        proxy.restore();
        round_trip(proxy.addr(), Duration::from_secs(2))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn latency_delays_each_direction() {
        let upstream = echo_server().await;
        let proxy = FaultProxy::start(&Handle::current(), upstream).unwrap();
        proxy.set_latency(Duration::from_millis(150));
        let start = Instant::now();
        round_trip(proxy.addr(), Duration::from_secs(3))
            .await
            .unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(proxy.state().latency_ms, 150);
    }
}
