//! A TCP proxy the test owns, to cut a connection without stopping the service behind it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct Proxy {
    pub port: u16,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<Link>>>,
    accept: AbortHandle,
}

/// One forwarded connection.
struct Link {
    task: AbortHandle,
    /// A Postgres replication connection (its startup message asks for `replication`).
    replication: bool,
    /// Bytes are held, in both directions, and the connection stays open: half-open as both
    /// ends see it.
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<Link>>> = Arc::default();
        let (target, accept_open, accept_connections) =
            (target.to_owned(), Arc::clone(&open), Arc::clone(&connections));
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if !accept_open.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                // The first bytes tell a replication connection from the others.
                let mut first = vec![0u8; 8192];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    client.peek(&mut first),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => 0,
                };
                let replication = first[..n].windows(12).any(|w| w == b"replication\0");
                let frozen = Arc::new(AtomicBool::new(false));
                let target = target.clone();
                let gate = Arc::clone(&frozen);
                let forward = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        forward(client, server, gate).await;
                    }
                });
                let mut list = accept_connections.lock().unwrap();
                list.retain(|c| !c.task.is_finished());
                list.push(Link { task: forward.abort_handle(), replication, frozen });
            }
        })
        .abort_handle();
        Proxy { port, open, connections, accept }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.task.abort();
        }
    }

    /// Holds every byte of the open replication connections, without closing them (a network
    /// that silently stopped delivering); new connections are forwarded as usual. Returns how
    /// many were frozen.
    pub fn freeze_replication(&self) -> usize {
        self.freeze(|link| link.replication)
    }

    /// As [`Self::freeze_replication`], for every open connection.
    pub fn freeze_all(&self) -> usize {
        self.freeze(|_| true)
    }

    /// Lets the frozen connections flow again.
    pub fn thaw(&self) {
        for link in self.connections.lock().unwrap().iter() {
            link.frozen.store(false, Ordering::SeqCst);
        }
    }

    fn freeze(&self, which: impl Fn(&Link) -> bool) -> usize {
        let list = self.connections.lock().unwrap();
        let links = list.iter().filter(|l| which(l) && !l.task.is_finished());
        links.map(|l| l.frozen.store(true, Ordering::SeqCst)).count()
    }

    /// Cuts, refuses connections for `outage` (the scenario's own clock), then accepts again.
    pub async fn cut_for(&self, outage: std::time::Duration) {
        self.cut();
        tokio::time::sleep(outage).await;
        self.restore();
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Copies both ways until either side closes; while `frozen`, holds what it read.
async fn forward(client: TcpStream, server: TcpStream, frozen: Arc<AtomicBool>) {
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, Arc::clone(&frozen));
    let down = pump(server_read, client_write, frozen);
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    // Frozen: the end stays open (half-open), as a silent network would leave it.
    while frozen.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
