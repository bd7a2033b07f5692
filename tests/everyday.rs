//! Everyday Dockerfiles (issue 14): what BuildKit and the docker CLI accept
//! or refuse in ordinary builds, through the real `kiln` binary on the
//! busybox base.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::busybox::{Setup, assert_stderr_has, ready};
use crate::harness::kiln;
use crate::httpd::Httpd;

/// `dockerfile` built from the context into a fresh directory (`-o
/// type=local`); the build's output and that directory.
fn build_local(s: &Setup, dockerfile: &str, extra: &[&str]) -> (Output, PathBuf) {
    let dest = tempfile::Builder::new()
        .prefix("out-")
        .tempdir_in(s.dir.path())
        .unwrap()
        .keep();
    let local = format!("type=local,dest={}", dest.display());
    let mut args = vec!["-o", local.as_str()];
    args.extend_from_slice(extra);
    (s.build(dockerfile, &args), dest)
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_failed_with(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected a failure; stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_stderr_has(out, needle);
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The image config (`Config`) of `name`, as `kiln inspect` shows it.
fn config(s: &Setup, name: &str) -> serde_json::Value {
    let (json, _) = s.ok(&["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0]["Config"].clone()
}

/// Runs `kiln` with `stdin` on its standard input.
fn kiln_with_stdin(s: &Setup, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = kiln()
        .env("KILN_ROOT", &s.root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        // kiln may stop reading early (an error): a broken pipe is fine.
        let _ = input.write_all(&stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// The names of the entries of a tar archive.
fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(bytes);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            e.path().unwrap().to_string_lossy().into_owned()
        })
        .collect()
}

/// Item 3: `ADD --checksum=sha256:<the right value> <url>` succeeds; a
/// wrong one and a malformed one fail, naming what was expected.
#[test]
fn add_checksum_of_a_download() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let served = s.dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("tool.txt"), "the tool\n").unwrap();
    let http = Httpd::serve(&served);
    let mut hasher = kiln_cache::Hasher::default();
    hasher.update(b"the tool\n");
    let right = hasher.finish().to_string();
    assert!(right.starts_with("sha256:"), "{right}");
    let url = http.url("tool.txt");

    let (out, rootfs) = build_local(
        &s,
        &format!(
            "FROM base:busybox\nADD --checksum={right} {url} /tool.txt\nARG SUM={right}\nADD --checksum=$SUM {url} /again.txt\n"
        ),
        &[],
    );
    assert_ok(&out);
    for file in ["tool.txt", "again.txt"] {
        assert_eq!(fs::read_to_string(rootfs.join(file)).unwrap(), "the tool\n");
    }

    let wrong = format!("sha256:{}", "0".repeat(64));
    let (out, _) = build_local(
        &s,
        &format!("FROM base:busybox\nADD --checksum={wrong} {url} /tool.txt\n"),
        &[],
    );
    assert_failed_with(&out, &format!("expected {wrong}, got {right}"));

    let (out, _) = build_local(
        &s,
        &format!("FROM base:busybox\nADD --checksum=sha256:abc {url} /tool.txt\n"),
        &[],
    );
    assert_failed_with(&out, "line 2: ADD");
    assert_stderr_has(&out, "sha256:abc");
}

/// Item 5: a wildcard source that matches nothing is skipped (BuildKit
/// sets `AllowEmptyWildcard` on every source), beside another source or
/// alone; the directory before the wildcard must exist, and a plain source
/// must exist.
#[test]
fn wildcard_source_matching_nothing() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("package.json"), "{}\n").unwrap();
    fs::create_dir_all(s.context.join("empty")).unwrap();
    let (out, rootfs) = build_local(
        &s,
        "FROM base:busybox\nWORKDIR /app\nCOPY package.json package-lock.json* ./\nCOPY nomatch* /none/\nCOPY empty/*.txt /none2/\n",
        &[],
    );
    assert_ok(&out);
    assert_eq!(
        fs::read_to_string(rootfs.join("app/package.json")).unwrap(),
        "{}\n"
    );
    assert!(!rootfs.join("app/package-lock.json").exists());
    assert!(
        !rootfs.join("none").exists() && !rootfs.join("none2").exists(),
        "nothing copied, nothing made"
    );

    let (out, _) = build_local(&s, "FROM base:busybox\nCOPY missing/*.txt /x/\n", &[]);
    assert_failed_with(&out, "missing");
    assert_stderr_has(&out, "no such file or directory");
    let (out, _) = build_local(
        &s,
        "FROM base:busybox\nCOPY package.json nosuch.json ./\n",
        &[],
    );
    assert_failed_with(&out, "nosuch.json");
}

/// Item 7: `--chmod` in symbolic form, applied to each file's own mode
/// (`X` only to directories and files something may already execute).
#[test]
fn copy_chmod_symbolic() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let ctx = &s.context;
    let set = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    fs::write(ctx.join("run.sh"), "#!/bin/sh\n").unwrap();
    set(&ctx.join("run.sh"), 0o644);
    fs::create_dir_all(ctx.join("tree")).unwrap();
    fs::write(ctx.join("tree/data"), "d").unwrap();
    fs::write(ctx.join("tree/tool"), "t").unwrap();
    fs::create_dir_all(ctx.join("tree/sub")).unwrap();
    set(&ctx.join("tree/sub"), 0o700);
    set(&ctx.join("tree/data"), 0o600);
    set(&ctx.join("tree/tool"), 0o700);
    set(&ctx.join("tree"), 0o700);
    let (out, rootfs) = build_local(
        &s,
        "FROM base:busybox\n\
         COPY --chmod=u=rwx,g=rx,o= run.sh /s1\n\
         COPY --chmod=+x run.sh /s2\n\
         COPY --chmod=g+r,a+X tree /t/\n\
         COPY --chmod=0640 run.sh /s3\n",
        &[],
    );
    assert_ok(&out);
    assert_eq!(mode(&rootfs.join("s1")), 0o750);
    assert_eq!(mode(&rootfs.join("s2")), 0o755);
    assert_eq!(mode(&rootfs.join("s3")), 0o640);
    // `/t/` is made to hold the contents (fsutil's MkdirAll: 0755 for a
    // symbolic --chmod), not copied from `tree`.
    assert_eq!(mode(&rootfs.join("t")), 0o755, "made, not copied");
    assert_eq!(mode(&rootfs.join("t/data")), 0o640, "no x anywhere: no X");
    assert_eq!(mode(&rootfs.join("t/tool")), 0o751, "executable: X applies");
    assert_eq!(mode(&rootfs.join("t/sub")), 0o751, "a directory: X applies");

    let (out, _) = build_local(&s, "FROM base:busybox\nCOPY --chmod=u+q run.sh /\n", &[]);
    assert_failed_with(&out, "line 2: COPY --chmod=u+q");
    let (out, _) = build_local(&s, "FROM base:busybox\nCOPY --chmod=888 run.sh /\n", &[]);
    assert_failed_with(
        &out,
        "invalid chmod parameter: '888'. it should be octal string and between 0 and 07777",
    );
}

/// Item 8: `dest=-` (and `-o -`) writes the archive to standard output, as
/// buildx does; a directory output cannot go there.
#[test]
fn output_to_stdout() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nRUN echo made > /made\n",
    )
    .unwrap();
    let ctx = s.context.to_str().unwrap();
    let workdir = s.dir.path().join("cwd");
    fs::create_dir_all(&workdir).unwrap();
    let run = |args: &[&str]| {
        let out = kiln()
            .env("KILN_ROOT", &s.root)
            .current_dir(&workdir)
            .args(args)
            .output()
            .unwrap();
        assert!(!workdir.join("-").exists(), "a file named '-': {args:?}");
        out
    };

    for spec in ["type=tar,dest=-", "-", "type=tar"] {
        let out = run(&["build", "-o", spec, ctx]);
        assert_ok(&out);
        let names = tar_names(&out.stdout);
        assert!(
            names.iter().any(|n| n.trim_start_matches("./") == "made"),
            "{spec}: {names:?}"
        );
    }
    for (kind, inside) in [("oci", "index.json"), ("docker", "manifest.json")] {
        let out = run(&["build", "-o", &format!("type={kind},dest=-"), ctx]);
        assert_ok(&out);
        let names = tar_names(&out.stdout);
        assert!(names.iter().any(|n| n == inside), "{kind}: {names:?}");
    }
    // Through kilnd: the archive streams to the client's standard output.
    let kilnd = crate::kilnd::Kilnd::start(&s);
    let addr = kilnd.addr();
    let out = run(&["build", "--addr", &addr, "-o", "type=oci,dest=-", ctx]);
    assert_ok(&out);
    assert!(tar_names(&out.stdout).iter().any(|n| n == "index.json"));
    drop(kilnd);

    let out = run(&["build", "-o", "type=local,dest=-", ctx]);
    assert_failed_with(&out, "dest cannot be stdout for local exporter");
    let out = run(&["build", "-o", "-", "-o", "type=oci,dest=-", ctx]);
    assert_failed_with(&out, "multiple outputs configured to write to stdout");
    let out = run(&["build", "-q", "-o", "-", ctx]);
    assert_failed_with(&out, "--quiet");
}

/// Item 9: `--pull` is a switch (`docker buildx build --pull`); the
/// policies still go after `=`.
#[test]
fn pull_is_a_switch() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("hello.txt"), "hi\n").unwrap();
    fs::write(
        s.context.join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .unwrap();
    let ctx = s.context.to_str().unwrap();
    for args in [
        &["build", "--pull", ctx][..],
        &["build", "--pull=never", ctx],
        &["build", "--pull=false", ctx],
        &["build", ctx, "--pull"],
    ] {
        let out = s.kiln(args);
        assert_ok(&out);
    }
    let out = s.kiln(&["build", "--pull=sometimes", ctx]);
    assert_failed_with(&out, "sometimes");
}

/// Item 10: plain progress shows a step's last line even without a final
/// newline.
#[test]
fn plain_progress_keeps_an_unterminated_last_line() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = s.build(
        "FROM base:busybox\nRUN echo first-line && echo -n last-without-newline\n",
        &["--progress=plain"],
    );
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `#N line` of the step's output (the step's own title names both).
    let printed = |want: &str| {
        stderr.lines().any(|l| {
            l.split_once(' ')
                .is_some_and(|(n, rest)| n.starts_with('#') && rest == want)
        })
    };
    assert!(printed("first-line"), "{stderr}");
    assert!(printed("last-without-newline"), "{stderr}");
}

/// Item 11: a Dockerfile on standard input with `-` as the context (no
/// context), as docker tells a Dockerfile from a (compressed) tar.
#[test]
fn dockerfile_on_stdin_as_the_context() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let out = kiln_with_stdin(
        &s,
        &["build", "-t", "piped:df", "-"],
        b"FROM base:busybox\nRUN echo from-stdin > /f\nCMD [\"cat\", \"/f\"]\n",
    );
    assert_ok(&out);
    assert_eq!(
        config(&s, "piped:df")["Cmd"],
        serde_json::json!(["cat", "/f"])
    );
    {
        let kilnd = crate::kilnd::Kilnd::start(&s);
        let out = kiln_with_stdin(
            &s,
            &["build", "--addr", &kilnd.addr(), "-t", "piped:remote", "-"],
            b"FROM base:busybox\nLABEL through=kilnd\n",
        );
        assert_ok(&out);
    }
    assert_eq!(config(&s, "piped:remote")["Labels"]["through"], "kilnd");
    // COPY has nothing to read: the context is empty.
    let out = kiln_with_stdin(&s, &["build", "-"], b"FROM base:busybox\nCOPY anything /\n");
    assert_failed_with(&out, "anything");
    // A gzip'd tar is still a context.
    let ctx = s.dir.path().join("tarred");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM base:busybox\nCOPY a.txt /\n").unwrap();
    fs::write(ctx.join("a.txt"), "a\n").unwrap();
    let tarball = Command::new("tar")
        .arg("-C")
        .arg(&ctx)
        .args(["-czf", "-", "."])
        .output()
        .unwrap()
        .stdout;
    let out = kiln_with_stdin(&s, &["build", "-t", "piped:tar", "-"], &tarball);
    assert_ok(&out);
}

/// Item 17: `FROM scratch` images have `WorkingDir` "/" (BuildKit's empty
/// image); an image from a base without one has none, as in BuildKit.
#[test]
fn scratch_working_dir() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("a.txt"), "a\n").unwrap();
    assert_ok(&s.build("FROM scratch\nCOPY a.txt /\n", &["-t", "wd:scratch"]));
    assert_eq!(config(&s, "wd:scratch")["WorkingDir"], "/");
    assert_ok(&s.build("FROM base:busybox\nCOPY a.txt /\n", &["-t", "wd:base"]));
    let base = config(&s, "wd:base");
    assert!(
        base["WorkingDir"].is_null() || base["WorkingDir"] == "",
        "{base}"
    );
}

/// Item 19: a wildcard that matches one file, copied to a path without a
/// trailing slash, makes that file; several matches need a directory.
#[test]
fn wildcard_to_a_file_name() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("foo.go"), "foo-contents").unwrap();
    fs::write(s.context.join("bar.go"), "bar-contents").unwrap();
    let (out, rootfs) = build_local(
        &s,
        "FROM base:busybox\nCOPY f*.go foo2.go\nCOPY *.go /gofiles/\nRUN mkdir /existing\nCOPY *.go /existing\n",
        &[],
    );
    assert_ok(&out);
    assert_eq!(
        fs::read_to_string(rootfs.join("foo2.go")).unwrap(),
        "foo-contents"
    );
    for dir in ["gofiles", "existing"] {
        assert_eq!(
            fs::read_to_string(rootfs.join(dir).join("bar.go")).unwrap(),
            "bar-contents"
        );
    }
    let (out, _) = build_local(&s, "FROM base:busybox\nCOPY *.go /one.go\n", &[]);
    assert_failed_with(&out, "must be a directory");
}

/// Item 25: errors BuildKit gives.
#[test]
fn errors_buildkit_gives() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(s.context.join("f"), "f\n").unwrap();

    let out = s.build(
        "FROM base:busybox AS first\nCOPY --from=later /f /f\nFROM base:busybox AS later\nCOPY f /f\nFROM first\n",
        &[],
    );
    assert_failed_with(
        &out,
        "line 2: COPY --from=later /f /f: cannot copy from stage \"later\", it needs to be defined before current stage \"first\"",
    );
    let out = s.build(
        "FROM base:busybox AS first\nRUN --mount=from=later,target=/m true\nFROM base:busybox AS later\nFROM first\n",
        &[],
    );
    assert_failed_with(
        &out,
        "cannot mount from stage \"later\" to \"/m\", stage needs to be defined before current command",
    );

    let out = s.build(
        "FROM base:busybox AS src\nFROM base:busybox\nENV X=src\nRUN --mount=from=$X,target=/m true\n",
        &[],
    );
    assert_failed_with(&out, "line 4: RUN");
    assert_stderr_has(&out, "X is an ENV");
    // A build argument is expanded there (kiln's extension).
    let out = s.build(
        "FROM base:busybox AS src\nRUN echo src > /marker\nFROM base:busybox\nARG X=src\nRUN --mount=from=$X,target=/m cat /m/marker\n",
        &["--no-cache"],
    );
    assert_ok(&out);

    // Not JSON (text after the array): the shell form, as BuildKit's parser
    // falls back to it; the shell then fails on it.
    let out = s.build(
        "FROM base:busybox\nRUN [\"echo\",\"hello\"]this is invalid\n",
        &[],
    );
    assert_failed_with(&out, "this is invalid");

    let out = s.build("# syntax=foobar\nFROM base:busybox\n", &[]);
    assert_failed_with(&out, "line 1");
    assert_stderr_has(&out, "foobar");
    for known in [
        "docker/dockerfile:1",
        "docker.io/docker/dockerfile:1.7-labs",
        "docker/dockerfile-upstream:master",
    ] {
        let out = s.build(&format!("# syntax={known}\nFROM base:busybox\n"), &[]);
        assert_ok(&out);
    }
}

/// Item 26: without `-f`, a context with only `dockerfile` uses it.
#[test]
fn lowercase_dockerfile_fallback() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::write(
        s.context.join("dockerfile"),
        "FROM base:busybox\nLABEL from=lowercase\n",
    )
    .unwrap();
    let out = s.kiln(&["build", "-t", "lower:1", s.context.to_str().unwrap()]);
    assert_ok(&out);
    assert_eq!(config(&s, "lower:1")["Labels"]["from"], "lowercase");
    // The upper-case name wins when both exist.
    fs::write(
        s.context.join("Dockerfile"),
        "FROM base:busybox\nLABEL from=uppercase\n",
    )
    .unwrap();
    let out = s.kiln(&["build", "-t", "lower:2", s.context.to_str().unwrap()]);
    assert_ok(&out);
    assert_eq!(config(&s, "lower:2")["Labels"]["from"], "uppercase");
}

/// Item 27: `COPY --parents` keeps only what follows a `/./` pivot, takes
/// wildcards before and after it and `**` across directories (BuildKit's
/// testCopyRelativeParents and testCopyParentsMissingDirectory), from a
/// stage and from the context.
#[test]
fn copy_parents_with_pivots_and_double_stars() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    for f in [
        "src/pkg/a.go",
        "src/pkg/b.go",
        "src/pkg/c.txt",
        "src/other/d.go",
    ] {
        let path = s.context.join(f);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, f).unwrap();
    }
    let dockerfile = "FROM base:busybox AS base\n\
        WORKDIR /test\n\
        RUN mkdir -p a/b/c/d/e a/b2/c/d/e a/b/c2/d/e a/b/c2/d/e2 && \
            touch a/b/c/d/foo a/b/c/d/e/bay a/b2/c/d/e/bar a/b/c2/d/e/baz a/b/c2/d/e2/baz\n\
        FROM scratch\n\
        COPY --from=base --parents /test/a/b/./c/d /middle/\n\
        COPY --from=base --parents /test/a/b/c/d/. /end/\n\
        COPY --from=base --parents /test/a/./b/./c /double/\n\
        COPY --from=base --parents /test/a/./*/c /wildcard/\n\
        COPY --from=base --parents /test/a/b*/./c/**/e /doublewildcard/\n\
        COPY --from=base --parents /test/a/b/c*/./d/**/baz /test/a/b*/./c/**/bar /doubleinputs/\n\
        COPY --from=base --parents /test/a/b9*/c /nothing/\n\
        COPY --parents ./src/./pkg/*.go /context/\n\
        COPY --parents src/**/*.go /all/\n";
    let dest = s.build_to_dir(dockerfile, &[]);
    let files = |dir: &str| {
        let mut found = Vec::new();
        let mut pending = vec![dest.join(dir)];
        while let Some(d) = pending.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    pending.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(dest.join(dir)).unwrap().to_owned();
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    };
    assert_eq!(files("middle"), ["c/d/e/bay", "c/d/foo"]);
    assert_eq!(files("end"), ["test/a/b/c/d/e/bay", "test/a/b/c/d/foo"]);
    assert_eq!(files("double"), ["b/c/d/e/bay", "b/c/d/foo"]);
    assert_eq!(
        files("wildcard"),
        ["b/c/d/e/bay", "b/c/d/foo", "b2/c/d/e/bar"]
    );
    assert_eq!(files("doublewildcard"), ["c/d/e/bar", "c/d/e/bay"]);
    assert_eq!(files("doubleinputs"), ["c/d/e/bar", "d/e/baz", "d/e2/baz"]);
    assert!(files("nothing").is_empty() && dest.join("nothing").is_dir());
    assert_eq!(files("context"), ["pkg/a.go", "pkg/b.go"]);
    assert_eq!(
        files("all"),
        ["src/other/d.go", "src/pkg/a.go", "src/pkg/b.go"]
    );
    // A path without wildcards must exist.
    let out = s.build(
        "FROM base:busybox AS base\nFROM scratch\nCOPY --from=base --parents /test/nonexistent-file /out/\n",
        &[],
    );
    assert_failed_with(&out, "nonexistent-file");
}
