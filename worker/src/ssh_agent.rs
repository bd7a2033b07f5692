//! SSH agent forwarding for `RUN --mount=type=ssh`: a socket in the step's
//! directory, owned and moded as the mount asks, whose connections are
//! relayed to the agent the build was given (`kiln build --ssh`). The
//! agent's own socket is never exposed, so the step cannot change its
//! owner or mode, and the relay ends with the step.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// A running relay; dropping it stops accepting connections.
#[derive(Debug)]
pub(crate) struct AgentRelay {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl AgentRelay {
    /// Listens at `path` (owner `uid:gid`, `mode`) and relays to `agent`.
    pub(crate) fn start(
        path: &Path,
        agent: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> io::Result<Self> {
        // Fail here, with the agent's path, rather than inside the step.
        UnixStream::connect(agent)
            .map_err(|e| io::Error::new(e.kind(), format!("SSH agent {}: {e}", agent.display())))?;
        let listener = UnixListener::bind(path)?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.to_owned();
        let stopped = Arc::clone(&stop);
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                match UnixStream::connect(&agent) {
                    Ok(upstream) => relay(client, upstream),
                    Err(e) => tracing::warn!(agent = %agent.display(), "SSH agent: {e}"),
                }
            }
        });
        Ok(Self {
            path: path.to_owned(),
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for AgentRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the blocked accept so that it sees `stop`.
        let _ = UnixStream::connect(&self.path);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copies both ways until either side closes.
fn relay(client: UnixStream, upstream: UnixStream) {
    let pair = client
        .try_clone()
        .and_then(|c| Ok((c, upstream.try_clone()?)));
    let Ok((client_w, upstream_r)) = pair else {
        return;
    };
    let pump = |mut from: UnixStream, mut to: UnixStream| {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    pump(client, upstream);
    pump(upstream_r, client_w);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn relays_to_the_agent_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent.sock");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            // The relay's own probe, then one real exchange.
            let _probe = agent.accept().unwrap();
            let (mut conn, _) = agent.accept().unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .unwrap();
        });
        let relay_path = dir.path().join("relay.sock");
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let relay = AgentRelay::start(&relay_path, &agent_path, uid, gid, 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&relay_path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut conn = UnixStream::connect(&relay_path).unwrap();
        conn.write_all(b"ping").unwrap();
        let mut answer = [0u8; 4];
        conn.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"PING");
        server.join().unwrap();
        drop(relay);
        assert!(!relay_path.exists(), "the relay's socket is gone");
        assert!(AgentRelay::start(&relay_path, &dir.path().join("none"), uid, gid, 0o600).is_err());
    }
}
