//! A small HTTP/1.1 file server on a loopback port for the tests of
//! `ADD <url>` and of Git over (dumb) HTTP: GET and HEAD of files under one
//! directory, with `Last-Modified`, nothing else.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};

/// A running server; it lives as long as the test process.
pub(crate) struct Httpd {
    pub(crate) addr: SocketAddr,
}

impl Httpd {
    pub(crate) fn serve(root: &Path) -> Self {
        Self::serve_with(root, true)
    }

    /// Without `Last-Modified` headers.
    pub(crate) fn serve_undated(root: &Path) -> Self {
        Self::serve_with(root, false)
    }

    fn serve_with(root: &Path, dated: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("the port");
        let root = root.to_owned();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let root = root.clone();
                std::thread::spawn(move || answer(&root, conn, dated));
            }
        });
        Self { addr }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

/// One request per connection (`Connection: close`).
fn answer(root: &Path, conn: TcpStream, dated: bool) {
    let mut reader = BufReader::new(&conn);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Headers: read and ignored.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let path = target.split('?').next().unwrap_or("/");
    let file: Option<PathBuf> = (!path.split('/').any(|p| p == ".."))
        .then(|| root.join(path.trim_start_matches('/')))
        .filter(|f| f.is_file());
    let mut out = &conn;
    let _ = match file.and_then(|f| std::fs::read(f).ok()) {
        Some(body) => {
            let date = if dated {
                "Last-Modified: Sun, 13 Sep 2020 12:26:40 GMT\r\n"
            } else {
                ""
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n{date}Connection: close\r\n\r\n",
                body.len()
            );
            out.write_all(head.as_bytes()).and_then(|()| {
                if method == "HEAD" {
                    Ok(())
                } else {
                    out.write_all(&body)
                }
            })
        }
        None => out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}
