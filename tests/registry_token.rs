//! Bearer tokens, as Docker Hub hands them out: a token service written
//! here signs RS256 JWTs (with `openssl`) that a real docker-registry
//! configured with `auth: token` trusts; kiln logs in, pushes and pulls.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_testing::{Need, require};

use crate::busybox::Setup;
use crate::registry::{REGISTRY_TEST, Registry, kiln_with_config, stderr};

/// A token service as Docker Hub's: `GET /token?service=…&scope=…` with
/// basic credentials answers `{"token": JWT}`, an RS256 JWT (signed by
/// `openssl`) carrying its certificate (`x5c`), which the registry trusts.
struct TokenService {
    addr: String,
    cert: PathBuf,
    _dir: tempfile::TempDir,
}

const TOKEN_USER: &str = "robot";
const TOKEN_PASSWORD: &str = "t0ken-pass";

impl TokenService {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=kiln-test-issuer", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", stderr(&made));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let key_path = key.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer_token(conn, &key_path, &der);
            }
        });
        Self {
            addr,
            cert,
            _dir: dir,
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn answer_token(conn: std::net::TcpStream, key: &Path, cert_der: &[u8]) -> std::io::Result<()> {
    use base64::Engine as _;
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(&conn);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut authorized = false;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{TOKEN_USER}:{TOKEN_PASSWORD}"));
        if line.to_ascii_lowercase().starts_with("authorization:")
            && line.trim_end().ends_with(&format!("Basic {basic}"))
        {
            authorized = true;
        }
        line.clear();
    }
    let mut out = &conn;
    if !authorized {
        return out.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    // scope=repository:NAME:ACTIONS (URL-encoded ':' and ',').
    let target = request.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let scope = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("scope="))
        .unwrap_or("")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%2F", "/");
    let mut parts = scope.splitn(3, ':');
    let (_, name, actions) = (
        parts.next(),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert_der)],
    });
    let claims = serde_json::json!({
        "iss": "kiln-test-issuer",
        "sub": TOKEN_USER,
        "aud": "kiln-test-registry",
        "exp": now + 600,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", std::process::id()),
        "access": [{"type": "repository", "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut sign = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    sign.stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())?;
    let signature = sign.wait_with_output()?.stdout;
    let body =
        serde_json::json!({"token": format!("{signing_input}.{}", b64url(&signature))}).to_string();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn bearer_tokens_from_a_token_service() {
    if !require(&[REGISTRY_TEST.as_slice(), &[Need::Tool("openssl")]].concat()) {
        return;
    }
    let tokens = TokenService::start();
    let registry = Registry::with_auth(&format!(
        "auth:\n  token:\n    realm: http://{}/token\n    service: kiln-test-registry\n    issuer: kiln-test-issuer\n    rootcertbundle: {}\n",
        tokens.addr,
        tokens.cert.display()
    ));
    let s = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: &str| kiln_with_config(&s, dir.path(), args, stdin);
    let app = format!("{}/tokens/app:1", registry.addr);
    s.ok(&["tag", "base:busybox", &app]);
    let out = run(&["push", &app], "");
    assert!(
        !out.status.success() && stderr(&out).contains("getting a token: HTTP 401"),
        "anonymous: the token service refuses: {}",
        stderr(&out)
    );
    let out = run(
        &[
            "login",
            &registry.addr,
            "-u",
            TOKEN_USER,
            "--password-stdin",
        ],
        &format!("{TOKEN_PASSWORD}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["push", &app], "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run(&["rmi", &app], "").status.success());
    let out = run(&["pull", &app], "");
    assert!(out.status.success(), "{}", stderr(&out));
}
