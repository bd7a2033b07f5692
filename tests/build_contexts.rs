//! Named contexts (`--build-context NAME=VALUE`, issue 18 item 3), as
//! `docker buildx build` and BuildKit's Dockerfile frontend have them:
//! each kind of value (a directory, `docker-image://` from a loopback
//! registry, `oci-layout://` made by `kiln build -o type=oci`, a Git
//! repository and an HTTP file served on loopback), each use (`FROM`,
//! `COPY --from`, `RUN --mount=from`), their precedence over a stage of
//! the same name, the cache, a directory's incremental session through
//! kilnd, and hostile values — embedded and through kilnd.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_testing::{Need, require};

use crate::busybox::{Setup, ready};
use crate::httpd::Httpd;
use crate::kilnd::Kilnd;
use crate::registry::{Registry, registry_ready};

/// Old enough that no file counts as just written (the client then
/// always sends it: see `changes` in `builder/src/client/build.rs`).
fn age(path: &Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// A named directory `extra`: `a.txt`, `sub/s.txt`, and `x.tmp`, which
/// its own `.dockerignore` leaves out.
fn extra_dir(s: &Setup) -> PathBuf {
    let extra = s.dir.path().join("extra");
    fs::create_dir_all(extra.join("sub")).unwrap();
    for (path, text) in [
        ("a.txt", "hello\n"),
        ("sub/s.txt", "sub\n"),
        ("x.tmp", "ignored\n"),
        (".dockerignore", "*.tmp\n"),
    ] {
        fs::write(extra.join(path), text).unwrap();
        age(&extra.join(path));
    }
    extra
}

/// Builds `dockerfile` with `args` into a fresh directory (`-o
/// type=local`); its standard error, and the directory.
fn build_to(s: &Setup, dockerfile: &str, args: &[&str]) -> (String, PathBuf) {
    let dest = s.dir.path().join("out");
    let _ = fs::remove_dir_all(&dest);
    let output = format!("type=local,dest={}", dest.display());
    let mut all = vec!["--progress=plain", "-o", output.as_str()];
    all.extend_from_slice(args);
    let out = s.build(dockerfile, &all);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{dockerfile}\n{stderr}");
    (stderr, dest)
}

fn read(dir: &Path, path: &str) -> String {
    fs::read_to_string(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What a failed build says.
fn failure(s: &Setup, dockerfile: &str, args: &[&str]) -> String {
    let out = s.build(dockerfile, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "built:\n{stderr}");
    stderr
}

/// Runs `each` embedded, then through a kilnd on `s`'s store (started
/// only then: an embedded build waits for the store kilnd holds), with
/// the global flags of each way.
fn both_ways(s: &Setup, mut each: impl FnMut(&[&str])) {
    each(&[]);
    let kilnd = Kilnd::start(s);
    let addr = kilnd.addr();
    each(&["--addr", &addr]);
}

/// The bytes of context kilnd said it received.
fn context_bytes(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("transferring context: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no context line in:\n{stderr}"))
}

/// The stage `tools` is replaced by the named context of its name (its
/// `RUN false` never runs); `extra` is read by COPY --from and a mount.
const USES: &str = "FROM base:busybox AS tools\nRUN false\n\
FROM base:busybox\n\
COPY --from=extra /a.txt /copied.txt\n\
RUN --mount=from=extra,target=/m cat /m/sub/s.txt > /mounted && ls -a /m > /listing\n\
COPY --from=tools /sub/s.txt /from-tools.txt\n";

/// Every use of a named directory, embedded then through kilnd.
fn directory_uses(s: &Setup, global: &[&str]) {
    let extra = extra_dir(s);
    let named = format!("extra={}", extra.display());
    let tools = format!("tools={}", extra.display());
    let mut args = global.to_vec();
    args.extend(["--build-context", &named, "--build-context", &tools]);
    let (_, out) = build_to(s, USES, &args);
    assert_eq!(read(&out, "copied.txt"), "hello\n");
    assert_eq!(read(&out, "mounted"), "sub\n");
    assert_eq!(read(&out, "from-tools.txt"), "sub\n");
    let listing = read(&out, "listing");
    assert!(
        listing.contains("a.txt") && listing.contains("sub"),
        "{listing}"
    );
    assert!(!listing.contains("x.tmp"), ".dockerignore'd: {listing}");
    // Built again: every step cached.
    let (again, _) = build_to(s, USES, &args);
    assert_eq!(again.matches(" CACHED").count(), 4, "{again}");

    // FROM a directory: its files are the root filesystem (RUN has no
    // shell there, so nothing runs on it).
    let (_, out) = build_to(s, "FROM extra\n", &args);
    assert_eq!(read(&out, "a.txt"), "hello\n");
    assert_eq!(read(&out, "sub/s.txt"), "sub\n");
    assert!(!out.join("x.tmp").exists());
}

#[test]
fn a_directory_by_every_use_embedded() {
    if !ready() {
        return;
    }
    directory_uses(&Setup::new(), &[]);
}

#[test]
fn a_directory_by_every_use_through_kilnd() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let kilnd = Kilnd::start(&s);
    directory_uses(&s, &["--addr", &kilnd.addr()]);
}

/// Through kilnd, a named directory is a context session of its own: a
/// rebuild with it unchanged sends nothing of it, a changed file alone is
/// sent, and what reads it runs again with the new content.
#[test]
fn an_unchanged_named_directory_is_not_sent_again() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let extra = extra_dir(&s);
    for i in 0..200 {
        let path = extra.join(format!("sub/f{i:03}.txt"));
        fs::write(&path, format!("file {i}\n").repeat(64)).unwrap();
        age(&path);
    }
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let named = format!("extra={}", extra.display());
    let dockerfile = "FROM base:busybox\nCOPY --from=extra /a.txt /copied.txt\nRUN --mount=from=extra,target=/m ls /m/sub | wc -l > /count\n";
    let args = ["--addr", addr.as_str(), "--build-context", named.as_str()];
    let (first, out) = build_to(&s, dockerfile, &args);
    assert!(
        context_bytes(&first) > 200 * 512,
        "the first build sends the directory: {first}"
    );
    assert_eq!(read(&out, "count").trim(), "201");
    let (unchanged, _) = build_to(&s, dockerfile, &args);
    // The context's tar holds the Dockerfile each build writes anew (2048
    // bytes); the directory's is empty (1024).
    assert!(
        context_bytes(&unchanged) <= 3072,
        "nothing changed, nothing sent: {unchanged}"
    );
    assert_eq!(unchanged.matches(" CACHED").count(), 2, "{unchanged}");

    fs::write(extra.join("a.txt"), "changed\n").unwrap();
    age(&extra.join("a.txt"));
    let (changed, out) = build_to(&s, dockerfile, &args);
    assert!(
        context_bytes(&changed) <= 4096,
        "only the changed file: {changed}"
    );
    assert_eq!(read(&out, "copied.txt"), "changed\n");
    // Both steps read the directory: both run again.
    assert_eq!(changed.matches(" CACHED").count(), 0, "{changed}");
}

/// `docker-image://` from a loopback registry replaces an image of that
/// name in FROM (`alpine:3.19` matched by that name, as BuildKit does)
/// and is read by COPY --from; a store without the image pulls it.
#[test]
fn an_image_from_a_registry() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::with_auth("");
    let pusher = Setup::new();
    let image = format!("{}/ctx/marked:1", registry.addr);
    let marked = pusher.build(
        "FROM base:busybox\nRUN echo from-registry > /marker\n",
        &["-t", &image],
    );
    assert!(marked.status.success());
    pusher.ok(&["push", &image]);
    let context = format!("alpine:3.19=docker-image://{image}");
    let copy = format!("tool=docker-image://{image}");
    let dockerfile = "FROM alpine:3.19\nCOPY --from=tool /marker /copied\nRUN cat /marker > /ran\n";
    for through in [false, true] {
        // A fresh store: the image comes from the registry.
        let s = Setup::new();
        let kilnd = through.then(|| Kilnd::start(&s));
        let addr = kilnd.as_ref().map(Kilnd::addr);
        let mut args: Vec<&str> = addr.iter().flat_map(|a| ["--addr", a.as_str()]).collect();
        args.extend(["--build-context", &context, "--build-context", &copy]);
        let (_, out) = build_to(&s, dockerfile, &args);
        assert_eq!(read(&out, "ran"), "from-registry\n");
        assert_eq!(read(&out, "copied"), "from-registry\n");
        let (again, _) = build_to(&s, dockerfile, &args);
        assert_eq!(again.matches(" CACHED").count(), 2, "{again}");
    }
}

/// An OCI layout `kiln build -o type=oci` wrote, unpacked into a
/// directory: by tag and by digest, in FROM and COPY --from.
fn oci_layout(s: &Setup) -> (PathBuf, String) {
    let tar = s.dir.path().join("layout.tar");
    let out = s.build(
        "FROM base:busybox\nRUN echo from-layout > /marker\n",
        &[
            "-t",
            "layout:v1",
            "-o",
            &format!("type=oci,dest={}", tar.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = s.dir.path().join("layout");
    fs::create_dir_all(&dir).unwrap();
    let untar = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(untar.success());
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    (dir, digest)
}

#[test]
fn an_oci_layout_by_tag_and_by_digest() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let (layout, digest) = oci_layout(&s);
    let by_tag = format!("base=oci-layout://{}:v1", layout.display());
    let by_digest = format!("tool=oci-layout://{}@{digest}", layout.display());
    let dockerfile = "FROM base\nCOPY --from=tool /marker /copied\nRUN cat /marker > /ran\n";
    both_ways(&s, |global| {
        let mut args = global.to_vec();
        args.extend(["--build-context", &by_tag, "--build-context", &by_digest]);
        let (_, out) = build_to(&s, dockerfile, &args);
        assert_eq!(read(&out, "ran"), "from-layout\n");
        assert_eq!(read(&out, "copied"), "from-layout\n");
    });
    // A tag the layout has not, when it lists more than one image (with
    // one, buildx takes that one whatever the tag).
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&index_path).unwrap()).unwrap();
    let mut other = index["manifests"][0].clone();
    other["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": "v3"});
    index["manifests"].as_array_mut().unwrap().push(other);
    fs::write(&index_path, index.to_string()).unwrap();
    let missing = format!("base=oci-layout://{}:v2", layout.display());
    let said = failure(&s, "FROM base\n", &["--build-context", &missing]);
    assert!(said.contains("index.json names no image \"v2\""), "{said}");
}

/// A layout whose layer blob is not what its name says is refused before
/// anything is built, embedded and through kilnd; so is a blob that is a
/// symlink out of the layout.
#[test]
fn an_oci_layout_blob_must_match_its_digest() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let (layout, _) = oci_layout(&s);
    // The biggest blob is the base layer: a byte of it flipped.
    let blobs = layout.join("blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = fs::read(&biggest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    // A fresh store, so that the blob is read from the layout.
    let fresh = Setup::new();
    let hostile = fresh.dir.path().join("layout");
    copy_tree(&layout, &hostile);
    let name = biggest.file_name().unwrap();
    fs::write(hostile.join("blobs/sha256").join(name), &bytes).unwrap();
    let context = format!("base=oci-layout://{}:v1", hostile.display());
    both_ways(&fresh, |global| {
        let mut args = global.to_vec();
        args.extend(["--build-context", &context]);
        let said = failure(&fresh, "FROM base\nRUN true\n", &args);
        assert!(
            said.contains("--build-context base=oci-layout://"),
            "{said}"
        );
        assert!(said.contains("digest mismatch"), "{said}");
        assert!(said.contains(&*name.to_string_lossy()), "{said}");
    });
    // A blob that is a symlink to a file outside the layout.
    let outside = fresh.dir.path().join("outside-blob");
    fs::write(&outside, &bytes).unwrap();
    fs::remove_file(hostile.join("blobs/sha256").join(name)).unwrap();
    std::os::unix::fs::symlink(&outside, hostile.join("blobs/sha256").join(name)).unwrap();
    let said = failure(
        &fresh,
        "FROM base\nRUN true\n",
        &["--build-context", &context],
    );
    assert!(said.contains("ELOOP"), "{said}");
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A Git repository (`#v1:app`) and an HTTP file (kept as the one file
/// `context`, as BuildKit keeps it) served on loopback.
#[test]
fn a_git_repository_and_an_http_file() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
        return;
    }
    let s = Setup::new();
    let served = s.dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    crate::remote_context::served_repo(&s.dir.path().join("work"), &served);
    fs::write(served.join("plain.txt"), "downloaded\n").unwrap();
    let http = Httpd::serve(&served);
    let git = format!("src={}#v1:app", http.url("repo.git"));
    let file = format!("dl={}", http.url("plain.txt"));
    let dockerfile = "FROM base:busybox\nCOPY --from=src hello.txt /hello\nCOPY --from=dl /context /dl\nRUN --mount=from=src,target=/src cat /src/hello.txt > /mounted\n";
    both_ways(&s, |global| {
        let mut args = global.to_vec();
        args.extend(["--build-context", &git, "--build-context", &file]);
        let (_, out) = build_to(&s, dockerfile, &args);
        assert_eq!(read(&out, "hello"), "v1\n");
        assert_eq!(read(&out, "mounted"), "v1\n");
        assert_eq!(read(&out, "dl"), "downloaded\n");
    });
}

/// Hostile values: a bad name, a name twice, too many contexts, a stage
/// that is none or not there; a symlink in a named directory never leads
/// out of it (COPY, a mount, FROM).
#[test]
fn hostile_named_contexts() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "FROM base:busybox\n";
    let said = failure(&s, dockerfile, &["--build-context", "../up=."]);
    assert!(
        said.contains("--build-context ../up=.: invalid context name \"../up\""),
        "{said}"
    );
    let said = failure(
        &s,
        dockerfile,
        &["--build-context", "a=.", "--build-context", "a:latest=."],
    );
    assert!(said.contains("given twice"), "{said}");
    let many: Vec<String> = (0..65).map(|i| format!("c{i}=.")).collect();
    let mut args = Vec::new();
    for spec in &many {
        args.extend(["--build-context", spec.as_str()]);
    }
    let said = failure(&s, dockerfile, &args);
    assert!(
        said.contains("--build-context: 65 given, over kiln's bound of 64"),
        "{said}"
    );
    let said = failure(&s, dockerfile, &["--build-context", "a=target:../x"]);
    assert!(
        said.contains("--build-context a=target:../x: \"../x\" is not a stage name"),
        "{said}"
    );
    let said = failure(&s, dockerfile, &["--build-context", "a=target:nowhere"]);
    assert!(said.contains("\"nowhere\" could not be found"), "{said}");
    let said = failure(&s, dockerfile, &["--build-context", "a=/no/such/dir"]);
    assert!(said.contains("--build-context a=/no/such/dir"), "{said}");

    // A named directory with links out of it: to a host directory holding
    // a secret, and to `/`.
    let secret = s.dir.path().join("host-secret");
    fs::create_dir_all(&secret).unwrap();
    fs::write(secret.join("key"), "host secret\n").unwrap();
    let extra = s.dir.path().join("linked");
    fs::create_dir_all(&extra).unwrap();
    std::os::unix::fs::symlink(&secret, extra.join("out")).unwrap();
    std::os::unix::fs::symlink("../../../../..", extra.join("up")).unwrap();
    let named = format!("extra={}", extra.display());
    both_ways(&s, |global| {
        let mut args = global.to_vec();
        args.extend(["--build-context", named.as_str()]);
        for copy in [
            "COPY --from=extra /out/key /got",
            "COPY --from=extra /up/etc/passwd /got",
        ] {
            let said = failure(&s, &format!("FROM base:busybox\n{copy}\n"), &args);
            assert!(!said.contains("host secret"), "{said}");
        }
        let mount = "FROM base:busybox\nRUN --mount=from=extra,target=/m cat /m/out/key > /got || echo none > /got\n";
        let (_, out) = build_to(&s, mount, &args);
        assert_eq!(read(&out, "got"), "none\n");
        // FROM: the links are links, never what they point at.
        let (_, out) = build_to(&s, "FROM extra\n", &args);
        let link = fs::read_link(out.join("out")).unwrap();
        assert_eq!(link, secret);
        assert!(fs::symlink_metadata(out.join("out")).unwrap().is_symlink());
    });
}

/// `target:STAGE`: the name is the Dockerfile's stage — before an image or
/// a stage of that name (which the stage replaces) — embedded and through
/// kilnd.
#[test]
fn a_stage_under_another_name() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "FROM base:busybox AS debian-base\nRUN echo from-the-stage > /which\n\
                      FROM base:busybox AS base\nRUN echo never > /which\n\
                      FROM base\nRUN cat /which > /got\n";
    both_ways(&s, |global| {
        let mut args = global.to_vec();
        args.extend(["--build-context", "base=target:debian-base"]);
        let (log, out) = build_to(&s, dockerfile, &args);
        assert_eq!(read(&out, "got"), "from-the-stage\n", "{log}");
        assert!(
            !log.contains("echo never"),
            "the stage it replaces never runs: {log}"
        );
    });
}
