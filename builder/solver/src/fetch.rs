//! Remote sources — of `ADD`, and a context named by URL: a URL
//! downloaded, a Git repository checked out — each into a scratch directory
//! under the store root that file ops then copy from, as they copy from the
//! build context.
//!
//! A fetched source's cache key is what was fetched (the file's digest; the
//! commit), not only the URL: a URL whose content changed makes the steps
//! after it run again, as in BuildKit.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_cache::Hasher;
use kiln_proto::ops::v1::{GitSource, HttpSource};

/// A fetched source: its directory and the digest of what it holds. The
/// scratch directory goes when the last step that reads it is done.
#[derive(Debug)]
pub struct Fetched {
    pub dir: PathBuf,
    pub digest: String,
    /// When the source was last changed, in seconds since the epoch (a Git
    /// commit's committer time; an HTTP `Last-Modified`), for
    /// `SOURCE_DATE_EPOCH=context`.
    pub time: Option<u64>,
    _scratch: tempfile::TempDir,
}

impl PartialEq for Fetched {
    fn eq(&self, other: &Self) -> bool {
        self.dir == other.dir && self.digest == other.digest
    }
}

impl Eq for Fetched {}

/// Downloads `source.url` into `dir/<filename>` (mode 0600, mtime from
/// `Last-Modified`, as Docker does), checking `--checksum` when given.
/// `progress` hears the bytes so far (and the total, when the server says)
/// about once a second, and at the end.
pub(crate) fn http(
    source: &HttpSource,
    scratch: tempfile::TempDir,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Fetched, String> {
    let dir = scratch.path();
    let client = reqwest::blocking::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        // Downloads may be large and slow; only connecting is bounded.
        .timeout(None)
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut response = client.get(&source.url).send().map_err(|e| {
        format!(
            "downloading {}: {}",
            source.url,
            kiln_image::error_chain(&e)
        )
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("downloading {}: HTTP {status}", source.url));
    }
    let modified = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let name = if source.filename.is_empty() {
        "index.html"
    } else {
        source.filename.as_str()
    };
    let path = dir.join(name);
    let io_err = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let mut file = std::fs::File::create(&path).map_err(io_err)?;
    let mut hasher = Hasher::default();
    let mut buf = vec![0u8; 1 << 16];
    let total = response.content_length();
    let (mut current, mut said) = (0u64, std::time::Instant::now());
    loop {
        let n = response
            .read(&mut buf)
            .map_err(|e| format!("downloading {}: {e}", source.url))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_err)?;
        current += n as u64;
        if said.elapsed() >= std::time::Duration::from_secs(1) {
            progress(current, total);
            said = std::time::Instant::now();
        }
    }
    progress(current, total);
    let digest = hasher.finish().to_string();
    if !source.checksum.is_empty() && source.checksum != digest {
        return Err(format!(
            "{}: checksum mismatch: expected {}, got {digest}",
            source.url, source.checksum
        ));
    }
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io_err)?;
    if let Some(time) = modified {
        file.set_modified(time).map_err(io_err)?;
    }
    Ok(Fetched {
        dir: dir.to_owned(),
        digest: format!("{name}\0{digest}"),
        time: modified
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs()),
        _scratch: scratch,
    })
}

/// Checks out `source` into `dir` with the `git` program (as BuildKit
/// does): the ref's tree, or its `subdir`, without `.git` unless asked.
///
/// The source is checked again here (see `kiln_frontend::gitref`): the
/// graph need not come from kiln's frontend.
pub(crate) fn git(source: &GitSource, scratch: tempfile::TempDir) -> Result<Fetched, String> {
    kiln_frontend::gitref::check(&source.remote, &source.r#ref, &source.subdir)
        .map_err(|e| e.to_string())?;
    let repo = scratch.path().join("repo");
    let home = scratch.path().join("home");
    for dir in [&repo, &home] {
        std::fs::create_dir(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let git = |args: &[&str]| git_in(&repo, &home, args);
    git(&["init", "-q"])?;
    git(&["remote", "add", "origin", &source.remote])?;
    let wanted = if source.r#ref.is_empty() {
        "HEAD"
    } else {
        source.r#ref.as_str()
    };
    let commit = fetch_commit(&git, &source.remote, wanted)?;
    if !source.checksum.is_empty() && !commit.starts_with(&source.checksum) {
        return Err(format!(
            "{}#{wanted}: checksum mismatch: expected {}, got {commit}",
            source.remote, source.checksum
        ));
    }
    git(&["checkout", "-q", "--detach", &commit])?;
    let time = git(&["show", "-s", "--format=%ct", &commit])?.parse().ok();
    if !source.keep_git_dir {
        let dot_git = repo.join(".git");
        std::fs::remove_dir_all(&dot_git)
            .map_err(|e| format!("removing {}: {e}", dot_git.display()))?;
    }
    let root = if source.subdir.is_empty() {
        repo
    } else {
        subdir(&repo, source)?
    };
    Ok(Fetched {
        dir: root,
        digest: format!("git\0{commit}\0{}\0{}", source.subdir, source.keep_git_dir),
        time,
        _scratch: scratch,
    })
}

/// Fetches `wanted` (a branch, a tag or a commit) from `origin`: its
/// commit. A shallow fetch of the one ref; dumb-HTTP remotes cannot do that
/// (a full fetch of the ref then), and a commit that is no ref's tip is
/// found by fetching everything. `--` ends the options: what follows is
/// never one (the ref is checked too).
fn fetch_commit(
    git: &dyn Fn(&[&str]) -> Result<String, String>,
    remote: &str,
    wanted: &str,
) -> Result<String, String> {
    let fetched = git(&["fetch", "-q", "--depth=1", "--", "origin", wanted])
        .or_else(|_| git(&["fetch", "-q", "--", "origin", wanted]));
    if fetched.is_ok() {
        return git(&["rev-parse", "FETCH_HEAD^{commit}"]);
    }
    git(&[
        "fetch",
        "-q",
        "--tags",
        "--",
        "origin",
        "+refs/heads/*:refs/remotes/origin/*",
    ])
    .map_err(|e| format!("fetching {remote}: {e}"))?;
    let candidates = [
        format!("refs/tags/{wanted}^{{commit}}"),
        format!("refs/remotes/origin/{wanted}^{{commit}}"),
        format!("{wanted}^{{commit}}"),
    ];
    candidates
        .iter()
        .find_map(|c| git(&["rev-parse", "-q", "--verify", c]).ok())
        .ok_or_else(|| format!("{remote}: no branch, tag or commit {wanted}"))
}

/// The checkout's `subdir`, which must be a directory inside it (no `..`,
/// not through a link).
fn subdir(repo: &std::path::Path, source: &GitSource) -> Result<std::path::PathBuf, String> {
    let path = repo.join(source.subdir.trim_start_matches('/'));
    let real = path
        .canonicalize()
        .map_err(|_| format!("{}: no directory {}", source.remote, source.subdir))?;
    if !real.starts_with(repo.canonicalize().map_err(|e| e.to_string())?) || !real.is_dir() {
        return Err(format!(
            "{}: {} is not a directory of the repository",
            source.remote, source.subdir
        ));
    }
    Ok(real)
}

/// Runs `git args` in `repo` with `home` as its `$HOME`; its trimmed
/// stdout, or its stderr as the error.
///
/// git's environment is built, not inherited: nothing of the host's
/// configuration (system, global, `GIT_*` variables, hooks from an init
/// template) reaches it, only the network transports of
/// `kiln_frontend::gitref` are allowed (`GIT_ALLOW_PROTOCOL` overrides any
/// `protocol.*.allow`, also for redirects and submodules: never `file`,
/// `ext` or another helper), and it never prompts.
fn git_in(repo: &Path, home: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = Command::new("git");
    command
        .env_clear()
        .env("HOME", home)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env(
            "GIT_ALLOW_PROTOCOL",
            kiln_frontend::gitref::ALLOWED_PROTOCOLS.join(":"),
        )
        .env("GIT_PROTOCOL_FROM_USER", "0")
        // ssh: no questions, no password prompts.
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    // What finds git and the network (PATH, proxies, an SSH agent, CA
    // certificates) is the host's own.
    for name in [
        "PATH",
        "LANG",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "SSH_AUTH_SOCK",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    let out = command
        .arg("-c")
        .arg("core.hooksPath=/dev/null")
        .arg("-c")
        .arg("init.templateDir=")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running git: {e} (ADD of a Git repository needs git)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even given a remote that the checks would refuse, git itself does
    /// not run a transport helper or read a local repository.
    #[test]
    fn git_allows_only_network_transports() {
        if !kiln_testing::require(&[kiln_testing::Need::Tool("git")]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (repo, home) = (dir.path().join("repo"), dir.path().join("home"));
        std::fs::create_dir(&repo).unwrap();
        std::fs::create_dir(&home).unwrap();
        let sentinel = dir.path().join("ran");
        git_in(&repo, &home, &["init", "-q"]).unwrap();
        let ext = format!("ext::sh -c touch% {}", sentinel.display());
        let e = git_in(&repo, &home, &["ls-remote", "--", &ext]).unwrap_err();
        assert!(e.contains("transport 'ext' not allowed"), "{e}");
        assert!(!sentinel.exists(), "the ext:: command ran");
        let local = format!("file://{}", repo.display());
        let e = git_in(&repo, &home, &["ls-remote", "--", &local]).unwrap_err();
        assert!(e.contains("transport 'file' not allowed"), "{e}");
        let e = git_in(&repo, &home, &["ls-remote", "--", repo.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("transport 'file' not allowed"), "{e}");
    }

    #[test]
    fn a_refused_source_never_reaches_git() {
        let dir = tempfile::tempdir().unwrap();
        let sentinel = dir.path().join("ran");
        for remote in [
            format!("ext::sh -c touch% {}", sentinel.display()),
            format!("ext::touch%{}", sentinel.display()),
            sentinel.display().to_string(),
        ] {
            let source = GitSource {
                remote,
                ..Default::default()
            };
            let e = git(&source, tempfile::tempdir().unwrap()).unwrap_err();
            assert!(e.starts_with("Git remote"), "{e}");
        }
        let source = GitSource {
            remote: "https://example.com/x.git".into(),
            r#ref: "--upload-pack=touch".into(),
            ..Default::default()
        };
        let e = git(&source, tempfile::tempdir().unwrap()).unwrap_err();
        assert!(e.contains("must not start with '-'"), "{e}");
        assert!(!sentinel.exists());
    }
}
