//! File ops over layered roots through the helper: the destination is an
//! overlay of image layers, sources are layer stacks or the context, and
//! the result is exactly the new layer. Needs root.

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use kiln_worker::fileop::{CopyRequest, FileAction, FileJob, OwnerSpec};
use kiln_worker::layer;
use kiln_worker::sandbox::spec::Rootfs;
use kiln_worker::sandbox::{Sandbox, SandboxError};

mod common;
use common::ready;

fn sandbox() -> Sandbox {
    Sandbox::new(env!("CARGO_BIN_EXE_kiln-sandbox"))
}

fn layer_entries(upper: &Path) -> Vec<String> {
    let tar = layer::diff(upper, Vec::new()).unwrap();
    tar::Archive::new(tar.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn job(
    dir: &Path,
    lowerdirs: Vec<PathBuf>,
    sources: Vec<Vec<PathBuf>>,
    actions: Vec<FileAction>,
) -> FileJob {
    let d = |name: &str| {
        let p = dir.join("job").join(name);
        fs::create_dir_all(&p).unwrap();
        p
    };
    FileJob {
        dest: Rootfs {
            lowerdirs,
            upperdir: d("upper"),
            workdir: d("work"),
            target: d("merged"),
        },
        sources,
        actions,
        state_dir: d("state"),
        previous: None,
    }
}

fn copy(source: usize, from: &str, to: &str) -> FileAction {
    FileAction::Copy {
        source,
        request: CopyRequest {
            sources: vec![from.into()],
            dest: to.into(),
            allow_wildcard: true,
            ..Default::default()
        },
    }
}

#[test]
fn copies_land_in_the_new_layer_seen_through_the_image() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let layers = dir.path().join("snapshots");
    let (base, top) = (layers.join("base"), layers.join("top"));
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::write(
        base.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::create_dir_all(top.join("srv")).unwrap();
    symlink("/", top.join("evil")).unwrap();
    let (s1, s2) = (dir.path().join("s1"), dir.path().join("s2"));
    fs::create_dir_all(s1.join("out")).unwrap();
    fs::write(s1.join("out/a"), "a").unwrap();
    fs::create_dir_all(s2.join("out")).unwrap();
    fs::write(s2.join("out/b"), "b").unwrap();
    let context = dir.path().join("context");
    fs::create_dir_all(&context).unwrap();
    fs::write(context.join("app.conf"), "conf").unwrap();

    let mut chowned = copy(0, "/app.conf", "/etc/");
    if let FileAction::Copy { request, .. } = &mut chowned {
        request.owner = Some(OwnerSpec("app".into()));
    }
    let actions = vec![
        chowned,
        copy(1, "/out", "/srv/"),
        copy(0, "/app.conf", "/evil/escaped.conf"),
        FileAction::Mkdir {
            path: "/work/app".into(),
            mode: 0o755,
            parents: true,
            owner: Some(OwnerSpec("app".into())),
        },
        FileAction::Mkfile {
            path: "/hello".into(),
            mode: 0o644,
            data: b"hi\n".to_vec(),
            owner: None,
        },
    ];
    let j = job(
        dir.path(),
        vec![top.clone(), base.clone()],
        vec![vec![context.clone()], vec![s2.clone(), s1.clone()]],
        actions,
    );
    sandbox().file(&j).unwrap();
    let upper = &j.dest.upperdir;
    assert_eq!(
        layer_entries(upper),
        [
            "escaped.conf",
            "etc/",
            "etc/app.conf",
            "hello",
            "srv/",
            "srv/a",
            "srv/b",
            "work/",
            "work/app/"
        ],
        "the symlink /evil -> / resolved inside the image"
    );
    assert_eq!(
        fs::metadata(upper.join("etc/app.conf")).unwrap().uid(),
        1000,
        "USER name from the lower layer's passwd"
    );
    assert!(!Path::new("/escaped.conf").exists());
    assert!(
        base.join("etc").read_dir().unwrap().count() == 1,
        "lower layers are untouched"
    );

    let missing = job(
        &dir.path().join("m"),
        vec![base.clone()],
        vec![vec![context.clone()]],
        vec![copy(0, "/nope.txt", "/x")],
    );
    let e = sandbox().file(&missing).unwrap_err();
    assert!(
        matches!(&e, SandboxError::File(m) if m == "no such file or directory: /nope.txt"),
        "{e}"
    );
}

#[test]
fn deep_images_fit_one_overlay_mount() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
    // 200 layers with 12-character names, as the store keeps them.
    let layers: Vec<PathBuf> = (0..200)
        .map(|i| {
            let p = snapshots.join(format!("{i:012x}"));
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join(format!("f{i}")), "x").unwrap();
            p
        })
        .collect();
    let mut top_first = layers.clone();
    top_first.reverse();
    let j = job(
        dir.path(),
        top_first,
        vec![],
        vec![FileAction::Mkfile {
            path: "/f0".into(),
            mode: 0o600,
            data: b"over".to_vec(),
            owner: None,
        }],
    );
    sandbox().file(&j).unwrap();
    assert_eq!(
        fs::read_to_string(j.dest.upperdir.join("f0")).unwrap(),
        "over"
    );
}
