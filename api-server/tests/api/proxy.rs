//! A TCP proxy of our own between the app and Postgres or Redis, on 127.0.0.1, to inject
//! network faults: pass, delay, black-hole or reset. The mode applies at once, to open
//! connections and new ones alike.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes go through untouched.
    Pass,
    /// Every chunk arrives this much later, in each direction (a latency, not a throttle).
    Delay(Duration),
    /// Connections stay open and bytes are swallowed: a peer gone silent, packets dropped.
    BlackHole,
    /// Open connections are reset (RST) and new ones are reset on accept.
    Reset,
}

pub struct Proxy {
    port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, watcher) = watch::channel(Mode::Pass);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(connection(client, upstream, watcher.clone()));
            }
        });
        Self { port, mode, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.set(Mode::Reset);
    }
}

/// Closing with `SO_LINGER` 0 sends RST instead of FIN, and does not block.
#[allow(deprecated)]
fn reset(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn connection(client: TcpStream, upstream: u16, mode: watch::Receiver<Mode>) {
    if *mode.borrow() == Mode::Reset {
        return reset(&client);
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return reset(&client);
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(pump(client_read, server_write, mode.clone()));
    tokio::spawn(pump(server_read, client_write, mode));
}

/// One direction: reads, applies the mode, and hands chunks to a writer that sends each
/// at its due time. Ends on EOF, on an error, or on `Reset` (then RSTs its socket).
async fn pump(mut from: OwnedReadHalf, to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let (chunks, due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(write_when_due(to, due));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let at = match *mode.borrow() {
                    Mode::Pass => Instant::now(),
                    Mode::Delay(delay) => Instant::now() + delay,
                    Mode::BlackHole => continue,
                    Mode::Reset => break reset(from.as_ref()),
                };
                if chunks.send((at, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() || *mode.borrow() == Mode::Reset {
                    writer.abort();
                    return reset(from.as_ref());
                }
            }
        }
    }
    drop(chunks);
    let _ = writer.await;
}

async fn write_when_due(
    mut to: OwnedWriteHalf,
    mut due: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
) {
    while let Some((at, bytes)) = due.recv().await {
        tokio::time::sleep_until(at).await;
        if to.write_all(&bytes).await.is_err() {
            return;
        }
    }
}
