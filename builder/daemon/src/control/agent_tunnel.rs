//! SSH agents forwarded over a Build call (`kiln build --ssh` through
//! kilnd): each connection a step makes to its agent socket travels as
//! [`pb::SshFrame`]s on the call's two streams, and is relayed at the far
//! end to the client's agent. Both ends use [`Tunnels`]: kilnd for the
//! sockets it serves the build ([`ForwardedAgents`]), the CLI for its
//! connections to its agents.
//!
//! Each direction ends on its own (`eof`: shut down writing), so a client
//! that half-closes after its request still gets the answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use kiln_proto::control::v1 as pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// One end of the tunnels of a call: the connections at this end by id,
/// and the stream frames leave by.
pub struct Tunnels<M> {
    /// Where frames for a connection's socket go; removed at its `eof`.
    writers: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
    /// Weak: tunnels never keep a call's stream open; it ends when its
    /// owner is done with it (kilnd: after the result).
    out: mpsc::WeakSender<M>,
    wrap: fn(pb::SshFrame) -> M,
}

impl<M: Send + 'static> Tunnels<M> {
    /// Frames leave through `out` while it is open, each made a message
    /// by `wrap`.
    pub fn new(out: &mpsc::Sender<M>, wrap: fn(pb::SshFrame) -> M) -> Arc<Self> {
        Arc::new(Self {
            writers: Mutex::new(HashMap::new()),
            out: out.downgrade(),
            wrap,
        })
    }

    /// Sends `frame` to the far end; false once the call's stream is over.
    async fn send(
        out: &mpsc::WeakSender<M>,
        wrap: fn(pb::SshFrame) -> M,
        frame: pb::SshFrame,
    ) -> bool {
        match out.upgrade() {
            Some(out) => out.send(wrap(frame)).await.is_ok(),
            None => false,
        }
    }

    /// Relays `stream` as connection `conn`: what it reads leaves as frames
    /// (`eof` at its end), frames [`Tunnels::deliver`]ed to `conn` are
    /// written to it. Must run inside the async runtime.
    pub fn attach(&self, conn: u64, stream: UnixStream) {
        let (mut read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
        self.writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(conn, tx);
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if write.write_all(&data).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let (out, wrap) = (self.out.clone(), self.wrap);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                // An error ends this direction as its end would.
                let n = read.read(&mut buf).await.unwrap_or(0);
                let frame = pb::SshFrame {
                    conn,
                    id: String::new(),
                    data: buf[..n].to_vec(),
                    eof: n == 0,
                };
                if !Self::send(&out, wrap, frame).await || n == 0 {
                    break;
                }
            }
        });
    }

    /// A frame from the far end: its data is written to the connection's
    /// socket; at `eof` the socket's writing side is shut down. Frames for
    /// connections not (or no longer) here are dropped.
    pub async fn deliver(&self, frame: pb::SshFrame) {
        let writer = {
            let mut writers = self.writers.lock().unwrap_or_else(PoisonError::into_inner);
            if frame.eof {
                writers.remove(&frame.conn)
            } else {
                writers.get(&frame.conn).cloned()
            }
        };
        // Dropping the last sender (at `eof`) ends the writer task, which
        // shuts the socket's writing side down after what was queued.
        if let Some(writer) = writer
            && !frame.data.is_empty()
        {
            let _ = writer.send(frame.data).await;
        }
    }

    /// Ends connection `conn`, which could not be made at this end.
    pub async fn refuse(&self, conn: u64) {
        let frame = pb::SshFrame {
            conn,
            eof: true,
            ..Default::default()
        };
        Self::send(&self.out, self.wrap, frame).await;
    }
}

/// kilnd's end: a socket per forwarded agent for the build's worker
/// ([`ForwardedAgents::sockets`]); each connection to one is opened at the
/// client with a frame naming the agent, then relayed by the tunnels.
/// Dropping it stops accepting.
pub(super) struct ForwardedAgents {
    sockets: Vec<(String, PathBuf)>,
    accepting: Vec<tokio::task::JoinHandle<()>>,
}

impl ForwardedAgents {
    /// Listens in `dir` (which only kilnd may enter) for each id of `ids`.
    /// Must run inside the async runtime.
    pub(super) fn listen<M: Send + 'static>(
        ids: &[String],
        dir: &Path,
        tunnels: &Arc<Tunnels<M>>,
    ) -> std::io::Result<Self> {
        let next = Arc::new(AtomicU64::new(0));
        let mut sockets = Vec::new();
        let mut accepting = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let path = dir.join(format!("ssh-agent-{n}.sock"));
            let listener = UnixListener::bind(&path)?;
            sockets.push((id.clone(), path));
            let (id, tunnels, next) = (id.clone(), Arc::clone(tunnels), Arc::clone(&next));
            accepting.push(tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let conn = next.fetch_add(1, Ordering::Relaxed);
                    let open = pb::SshFrame {
                        conn,
                        id: id.clone(),
                        ..Default::default()
                    };
                    // The opening frame goes before any of the connection's data.
                    if !Tunnels::send(&tunnels.out, tunnels.wrap, open).await {
                        break;
                    }
                    tunnels.attach(conn, stream);
                }
            }));
        }
        Ok(Self { sockets, accepting })
    }

    /// Each forwarded agent's id and the socket standing for it.
    pub(super) fn sockets(&self) -> &[(String, PathBuf)] {
        &self.sockets
    }
}

impl Drop for ForwardedAgents {
    fn drop(&mut self) {
        for task in &self.accepting {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends in one process, joined by two channels as the Build call
    /// joins them: a connection to kilnd's socket reaches the agent, and
    /// the agent's answer comes back after the asker half-closes.
    #[tokio::test]
    async fn a_connection_crosses_the_tunnel_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent.sock");
        let agent = UnixListener::bind(&agent_path).unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = agent.accept().await.unwrap();
            let mut asked = Vec::new();
            conn.read_to_end(&mut asked).await.unwrap();
            conn.write_all(&asked.to_ascii_uppercase()).await.unwrap();
        });

        let (to_client, mut at_client) = mpsc::channel::<pb::SshFrame>(16);
        let (to_kilnd, mut at_kilnd) = mpsc::channel::<pb::SshFrame>(16);
        let kilnd = Tunnels::new(&to_client, |f| f);
        let client = Tunnels::new(&to_kilnd, |f| f);
        let agents = ForwardedAgents::listen(&["default".into()], dir.path(), &kilnd).unwrap();
        tokio::spawn(async move {
            while let Some(frame) = at_kilnd.recv().await {
                kilnd.deliver(frame).await;
            }
        });
        tokio::spawn(async move {
            while let Some(frame) = at_client.recv().await {
                if frame.id.is_empty() {
                    client.deliver(frame).await;
                } else {
                    assert_eq!(frame.id, "default");
                    let stream = UnixStream::connect(&agent_path).await.unwrap();
                    client.attach(frame.conn, stream);
                }
            }
        });

        let (id, socket) = &agents.sockets()[0];
        assert_eq!(id, "default");
        let mut conn = UnixStream::connect(socket).await.unwrap();
        conn.write_all(b"request").await.unwrap();
        conn.shutdown().await.unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"REQUEST");
    }
}
