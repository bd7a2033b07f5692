//! `RUN --mount=type=ssh` against a real OpenSSH agent holding a real key:
//! `ssh-add -l` inside the step lists the key, embedded and through kilnd
//! (where the agent's connections are tunnelled over the build's call), and
//! the listing is the one the host's `ssh-add -l` gives.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use kiln_testing::{Need, require, wait_until};

use crate::busybox::Setup;
use crate::kilnd::Kilnd;

/// An `ssh-agent` on a socket of its own, holding one new ed25519 key;
/// killed when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Self {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Self { child, socket };
        wait_until(crate::harness::PATIENCE, "ssh-agent's socket", || {
            agent.socket.exists()
        });
        let key = dir.join("id_ed25519");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test-key", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(made.success());
        let added = agent.ssh_add().arg(&key).output().unwrap();
        assert!(added.status.success(), "{added:?}");
        agent
    }

    fn ssh_add(&self) -> Command {
        let mut command = Command::new("ssh-add");
        command.env("SSH_AUTH_SOCK", &self.socket);
        command
    }

    /// `ssh-add -l` on the host: the key's fingerprint line.
    fn listing(&self) -> String {
        let out = self.ssh_add().arg("-l").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host's `ssh-add` and the libraries it loads, in `dir`: a busybox
/// image runs it through the dynamic loader copied beside it.
fn copy_ssh_add(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let ssh_add = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v ssh-add"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let ssh_add = ssh_add.trim();
    fs::copy(ssh_add, dir.join("ssh-add")).unwrap();
    let ldd = Command::new("ldd").arg(ssh_add).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/…/libc.so.6 (0x…)" or "/lib64/ld-linux-….so.2 (0x…)"
        let path = line
            .split("=>")
            .last()
            .and_then(|rest| rest.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            let name = Path::new(path).file_name().unwrap();
            fs::copy(path, dir.join(name)).unwrap();
        }
    }
}

#[test]
fn a_step_lists_the_agents_key_embedded_and_through_kilnd() {
    if !require(&[
        Need::Root,
        Need::Busybox,
        Need::Tool("ssh-agent"),
        Need::Tool("ldd"),
    ]) {
        return;
    }
    let s = Setup::new();
    let agent = Agent::start(s.dir.path());
    copy_ssh_add(&s.context.join("ssh"));
    let expected = agent.listing();
    assert!(expected.contains("kiln-test-key"), "{expected}");
    let dockerfile = "FROM base:busybox\n\
        COPY ssh /ssh\n\
        RUN --mount=type=ssh sh -c 'for l in /ssh/ld-linux*; do \"$l\" --library-path /ssh /ssh/ssh-add -l; done' > /keys\n";
    let ssh = format!("default={}", agent.socket.display());

    let out = s.build(dockerfile, &["--ssh", &ssh, "-t", "ssh:embedded"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.layers_text("ssh:embedded").contains(&expected),
        "the step's ssh-add -l lists the agent's key: {expected}"
    );

    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    // --no-cache: the step runs again, now with the agent across the call.
    let out = s.build(
        dockerfile,
        &[
            "--addr",
            &addr,
            "--no-cache",
            "--ssh",
            &ssh,
            "-t",
            "ssh:kilnd",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        s.layers_text_through(&addr, "ssh:kilnd")
            .contains(&expected),
        "through kilnd too: {expected}"
    );

    // A step needing an agent the client did not forward fails as embedded.
    let out = s.build(
        "FROM base:busybox\nRUN --mount=type=ssh,id=other,required=true true\n",
        &["--addr", &addr, "--ssh", &ssh],
    );
    assert!(!out.status.success());
    crate::busybox::assert_stderr_has(&out, "SSH agent \"other\" was not provided");
}
