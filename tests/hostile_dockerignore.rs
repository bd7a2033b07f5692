//! `.dockerignore` however the ignored file is reached (issue 13, item
//! 11): through a symlink, a hard link, a linked directory, `COPY . .`,
//! wildcards, `ADD`, a bind mount — embedded and through kilnd. Each build
//! either fails or makes an image without the ignored content; the ignored
//! files in the context are untouched.

use std::fs;

use crate::busybox::{Setup, ready};
use crate::kilnd::Kilnd;

const SECRET: &str = "IGNORED-CONTENT-91c4";

/// A context with ignored `secret.txt` and `secrets/`, and other names for
/// them: symlinks (relative, absolute, to the directory) and a hard link.
fn hostile_context(s: &Setup) {
    let c = &s.context;
    fs::write(c.join(".dockerignore"), "secret.txt\nsecrets\n").unwrap();
    fs::write(c.join("secret.txt"), format!("{SECRET} file\n")).unwrap();
    fs::create_dir_all(c.join("secrets")).unwrap();
    fs::write(c.join("secrets/key"), format!("{SECRET} key\n")).unwrap();
    fs::write(c.join("plain.txt"), "plain\n").unwrap();
    std::os::unix::fs::symlink("secret.txt", c.join("alias.txt")).unwrap();
    std::os::unix::fs::symlink("/secret.txt", c.join("absolute.txt")).unwrap();
    std::os::unix::fs::symlink("secrets", c.join("dirlink")).unwrap();
    fs::hard_link(c.join("secret.txt"), c.join("hard.txt")).unwrap();
    fs::hard_link(c.join("secrets/key"), c.join("hardkey")).unwrap();
}

/// Every way to reach the ignored files.
const DOCKERFILES: &[&str] = &[
    "FROM base:busybox\nCOPY alias.txt /out\n",
    "FROM base:busybox\nCOPY absolute.txt /out\n",
    "FROM base:busybox\nADD alias.txt /out\n",
    "FROM base:busybox\nCOPY hard.txt /out\n",
    "FROM base:busybox\nCOPY hardkey /out\n",
    "FROM base:busybox\nCOPY dirlink/ /out/\n",
    "FROM base:busybox\nCOPY dirlink/key /out\n",
    "FROM base:busybox\nCOPY . /out/\n",
    "FROM base:busybox\nCOPY *.txt /out/\n",
    "FROM base:busybox\nCOPY ha* /out/\n",
    "FROM base:busybox\nRUN --mount=type=bind,target=/ctx cat /ctx/alias.txt /ctx/hard.txt /ctx/hardkey /ctx/dirlink/key /ctx/absolute.txt > /out; true\n",
];

/// Builds each of [`DOCKERFILES`] (with `extra` arguments); `layers` reads
/// an image's layers. Returns the Dockerfiles that built.
fn check_all(s: &Setup, extra: &[&str], layers: &dyn Fn(&str) -> String) -> Vec<&'static str> {
    let mut built = Vec::new();
    for (i, dockerfile) in DOCKERFILES.iter().enumerate() {
        let tag = format!("ignored:{i}");
        let mut args = extra.to_vec();
        args.extend(["-t", &tag]);
        let out = s.build(dockerfile, &args);
        if out.status.success() {
            built.push(*dockerfile);
            assert!(
                !layers(&tag).contains(SECRET),
                "the ignored content is in the image of:\n{dockerfile}"
            );
        }
    }
    // Untouched in the context.
    let secret = fs::read_to_string(s.context.join("secret.txt")).unwrap();
    assert_eq!(secret, format!("{SECRET} file\n"));
    built
}

/// `COPY .` and the bind mount build (without the ignored content); the
/// others may fail (what they name is not there), or build without it.
fn assert_harmless_ones_built(built: &[&str]) {
    for harmless in [DOCKERFILES[7], DOCKERFILES[10]] {
        assert!(
            built.contains(&harmless),
            "{harmless} failed; built: {built:#?}"
        );
    }
}

#[test]
fn ignored_files_are_not_there_however_named_embedded() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    hostile_context(&s);
    let built = check_all(&s, &[], &|tag| s.layers_text(tag));
    assert_harmless_ones_built(&built);
    // The plain file is there: the context still works.
    let out = s.build(
        "FROM base:busybox\nCOPY . /out/\nRUN cat /out/plain.txt\n",
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ignored_files_are_not_there_however_named_through_kilnd() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    hostile_context(&s);
    let kilnd = Kilnd::start(&s);
    let addr = kilnd.addr();
    let built = check_all(&s, &["--addr", &addr], &|tag| {
        s.layers_text_through(&addr, tag)
    });
    assert_harmless_ones_built(&built);
}
