//! kilnd over TCP with mutual TLS: certificates made by `openssl`; a
//! client (the CLI, a farm worker) with one is served, without one refused.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use kiln_testing::{Need, require, wait_until};

use crate::busybox::Setup;
use crate::harness::{PATIENCE, binary};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, by
/// `openssl`, in `dir`.
fn certificates(dir: &Path) {
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=kiln-test-ca 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext
        printf 'extendedKeyUsage=clientAuth\\n' > client.ext
        for who in server client; do
          openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=kiln-$who 2>/dev/null
          openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $who.pem -days 1 -extfile $who.ext 2>/dev/null
        done");
}

#[test]
fn mutual_tls_over_tcp() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("openssl")]) {
        return;
    }
    let s = Setup::new();
    let certs = s.dir.path().join("certs");
    fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let c = |name: &str| certs.join(name).to_str().unwrap().to_owned();

    // Plain TCP off loopback, or without --insecure, is refused up front.
    let refused = Command::new(binary("kilnd"))
        .env("KILN_ROOT", &s.root)
        .args(["--addr", &addr])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("TCP needs mutual TLS"));

    let mut kilnd = Command::new(binary("kilnd"))
        .env("KILN_ROOT", &s.root)
        .args([
            "--addr",
            &addr,
            "--tls-cert",
            &c("server.pem"),
            "--tls-key",
            &c("server.key"),
        ])
        .args(["--tls-ca", &c("ca.pem")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(PATIENCE, "kilnd to listen on its TCP port", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // With its certificate the client is served…
    let tls = [
        "--addr",
        &addr,
        "--tls-ca",
        &c("ca.pem"),
        "--tls-cert",
        &c("client.pem"),
        "--tls-key",
        &c("client.key"),
    ];
    let (images, _) = s.ok(&[&tls[..], &["images"]].concat());
    assert!(images.contains("base"), "{images}");
    // …without one it is refused, and so is plain HTTP/2.
    let out = s.kiln(&["--addr", &addr, "--tls-ca", &c("ca.pem"), "images"]);
    assert!(!out.status.success(), "no client certificate: refused");
    let out = s.kiln(&["--addr", &addr, "images"]);
    assert!(!out.status.success(), "no TLS at all: refused");

    // A farm worker attaches over the same port with its certificate (as
    // in deploy/kubernetes), one without is refused; steps run on it.
    let worker = |id: &str, identity: bool| {
        let mut command = Command::new(binary("kiln-worker"));
        command
            .args(["--kilnd", &addr, "--id", id, "--tls-ca", &c("ca.pem")])
            .arg("--root")
            .arg(s.dir.path().join(id));
        if identity {
            command.args([
                "--tls-cert",
                &c("client.pem"),
                "--tls-key",
                &c("client.key"),
            ]);
        }
        // The one kilnd refuses says why on stderr.
        let stderr = if identity {
            Stdio::null()
        } else {
            Stdio::piped()
        };
        command.stderr(stderr).spawn().unwrap()
    };
    let mut with_cert = worker("tls-worker", true);
    let mut without = worker("no-cert-worker", false);
    let listing = || s.ok(&[&tls[..], &["workers"]].concat()).0;
    wait_until(PATIENCE, "tls-worker to attach", || {
        listing().contains("tls-worker")
    });
    let out = s.build(
        "FROM base:busybox\nRUN echo over mTLS > /m\n",
        &[&tls[..], &["-t", "tls:1"]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let workers = listing();
    let row = workers
        .lines()
        .find(|l| l.starts_with("tls-worker"))
        .unwrap_or_else(|| panic!("the worker with a certificate attached: {workers}"));
    let steps = row.split_whitespace().nth(5);
    assert_eq!(steps, Some("1"), "it ran the step: {workers}");
    assert!(!workers.contains("no-cert-worker"), "{workers}");
    // Refused for its missing certificate, it exits with the reason
    // instead of trying again forever.
    wait_until(PATIENCE, "the worker without a certificate to exit", || {
        without.try_wait().unwrap().is_some()
    });
    let out = without.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("refused this worker"), "{said}");
    let _ = with_cert.kill();
    let _ = with_cert.wait();
    let _ = kilnd.kill();
    let _ = kilnd.wait();
}
