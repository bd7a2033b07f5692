//! The store against other local users (issue 13, item 8): its root and
//! the directories in it are 0700, also a store an older kiln left 0755
//! once it is opened again; an unprivileged user (`nobody`, through
//! `setpriv`) can neither list nor read nor run anything under it — not a
//! setuid binary of a snapshot, not another client's session tree; kilnd's
//! socket is 0660 from the moment it appears.

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_testing::{Need, require};

use crate::busybox::{Setup, ready};
use crate::harness::binary;
use crate::kilnd::Kilnd;

const DIRS: &[&str] = &[
    "content",
    "meta.sled",
    "tmp",
    "snapshots",
    "cache-mounts",
    "steps",
    "sessions",
];

/// `args` run as `nobody`: its output, or `None` when it failed.
fn as_nobody<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Option<String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Every file under `dir` named `name` (read as root).
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            out.extend(find(&path, name));
        } else if entry.file_name() == name {
            out.push(path);
        }
    }
    out
}

/// A test directory others may enter (tempdirs are 0700), so that only the
/// store's own modes stand between `nobody` and the store.
fn open_to_others(s: &Setup) {
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&s.context, fs::Permissions::from_mode(0o755)).unwrap();
}

fn assert_private(root: &Path) {
    assert_eq!(mode(root), 0o700, "{}", root.display());
    for dir in DIRS {
        assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
    }
}

#[test]
fn another_user_reaches_nothing_in_the_store() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("setpriv")]) {
        return;
    }
    let s = Setup::new();
    open_to_others(&s);
    fs::write(s.context.join(".env"), "API_KEY=s3cret-of-client-a\n").unwrap();
    let dockerfile = "FROM base:busybox\nCOPY .env /app/.env\nRUN --mount=type=cache,target=/c cp /bin/busybox /bin/suidbox && chmod 4755 /bin/suidbox && echo x > /c/x\n";
    let kilnd = Kilnd::start(&s);
    let out = s.build(dockerfile, &["--addr", &kilnd.addr(), "-t", "suid:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(kilnd);

    let root = &s.root;
    let suid = find(&root.join("snapshots"), "suidbox");
    assert!(
        !suid.is_empty(),
        "the step's snapshot holds the setuid binary"
    );
    assert!(mode(&suid[0]) & 0o4000 != 0);
    let env = find(&root.join("sessions"), ".env");
    assert!(!env.is_empty(), "kilnd kept the session tree");

    // What `nobody` tries; each must fail.
    let root_text = root.display().to_string();
    let attempts = [
        vec!["ls".to_owned(), root_text.clone()],
        vec!["ls".to_owned(), format!("{root_text}/snapshots")],
        vec!["cat".to_owned(), env[0].display().to_string()],
        vec![
            suid[0].display().to_string(),
            "id".to_owned(),
            "-u".to_owned(),
        ],
        vec!["ls".to_owned(), format!("{root_text}/cache-mounts")],
        vec!["ls".to_owned(), format!("{root_text}/content/blobs/sha256")],
    ];
    for attempt in &attempts {
        assert_eq!(
            as_nobody(attempt),
            None,
            "nobody ran {attempt:?} under the store"
        );
    }
    assert_private(root);
    // The check itself works: nobody reads what is open to it.
    fs::write(s.dir.path().join("open.txt"), "open\n").unwrap();
    let open = s.dir.path().join("open.txt");
    assert_eq!(
        as_nobody(&["cat", open.to_str().unwrap()]).as_deref(),
        Some("open\n")
    );
}

#[test]
fn an_old_store_is_made_private_when_opened() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build("FROM base:busybox\nRUN echo x > /x\n", &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As an older kiln left it.
    for dir in std::iter::once(s.root.clone()).chain(DIRS.iter().map(|d| s.root.join(d))) {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    s.ok(&["images"]);
    assert_private(&s.root);
}

/// kilnd's socket, watched from before kilnd starts (with umask 0, the
/// mode a bind gives it is 0777): every mode seen at the socket's path is
/// 0660, the first one included.
#[test]
fn kilnds_socket_is_never_open_to_all() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let socket = s.dir.path().join("run/kilnd.sock");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 0; exec \"$0\" --addr \"unix://$1\"")
        .arg(binary("kilnd"))
        .arg(&socket)
        .env("KILN_ROOT", &s.root)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Ok(meta) = fs::symlink_metadata(&socket) {
            let m = meta.mode() & 0o7777;
            if seen.last() != Some(&m) {
                seen.push(m);
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!seen.is_empty(), "kilnd never made its socket");
    assert_eq!(seen, [0o660], "modes seen at {}", socket.display());
}

/// kill -9 while `prune -a` removes a snapshot of 20,000 files: what is
/// left is an unfinished removal out of the snapshot's name (cleared when
/// the store opens), never a layer missing files under its name that the
/// next step would mount as complete. A new step over that layer sees every
/// file, and the same build makes the image it made before.
#[test]
fn a_prune_killed_midway_leaves_no_partial_snapshot() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    s.many_files();
    let build = |s: &Setup, counted: &str| {
        let dockerfile = format!(
            "FROM base:busybox\nCOPY src /src\nRUN find /src -type f | wc -l > /{counted}\n"
        );
        let flags = [
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000000",
            "-t",
            "many:1",
        ];
        let out = s.build(&dockerfile, &flags);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", "many:1"]).0).unwrap();
        (
            v[0]["Manifest"]["digest"].as_str().unwrap().to_owned(),
            s.layers_text("many:1"),
        )
    };
    let (digest, text) = build(&s, "count");
    assert!(text.contains("20000\n"), "every file counted: {text}");

    // -a removes every snapshot (a tagged image's too: they are unpacked
    // again from its blobs when a step needs them).
    let snapshots = s.root.join("snapshots");
    let mut prune = crate::harness::kiln()
        .env("KILN_ROOT", &s.root)
        .args(["prune", "-a"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kiln_testing::wait_until(crate::harness::PATIENCE, "a snapshot being removed", || {
        let removing = fs::read_dir(&snapshots).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("-discard-"))
        });
        assert!(
            removing || prune.try_wait().unwrap().is_none(),
            "prune finished before it could be killed"
        );
        removing
    });
    prune.kill().unwrap();
    prune.wait().unwrap();

    // A new step over the COPY's layer.
    let (_, text) = build(&s, "again");
    assert!(text.contains("20000\n"), "every file seen again: {text}");
    assert_eq!(build(&s, "count").0, digest, "the same image as before");
    let left: Vec<String> = fs::read_dir(&snapshots)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-discard-"))
        .collect();
    assert!(
        left.is_empty(),
        "the unfinished removal was cleared: {left:?}"
    );
}
