//! The cases' base image, `base:differential`: Debian's busybox-static
//! with the usual top-level directories, written here as a docker-archive
//! that both kiln (`kiln load`) and dockerd (`docker load`) read, so both
//! builders start from the same bytes. Everything in it is fixed (times,
//! owners, config), so every run makes the same archive and image ID.

use std::fs;
use std::path::Path;

use kiln_cache::Digest;
use serde_json::json;

/// The name the cases' Dockerfiles use (`FROM base:differential`).
pub(crate) const NAME: &str = "base:differential";

/// The base's mtime: 2000-01-01.
const BASE_TIME: u64 = 946_684_800;

/// The busybox applets the cases may call (symlinks in `/bin`).
const APPLETS: &[&str] = &[
    "[", "awk", "basename", "cat", "chgrp", "chmod", "chown", "cp", "cut", "dirname", "echo",
    "env", "false", "find", "grep", "head", "id", "ln", "ls", "mkdir", "mkfifo", "mv", "printf",
    "pwd", "readlink", "rm", "rmdir", "sed", "sh", "sleep", "sort", "stat", "tail", "tar", "test",
    "touch", "tr", "true", "wc", "whoami",
];

/// Writes the base's docker-archive to `path`.
pub(crate) fn write_archive(path: &Path) {
    let layer = rootfs_tar();
    let diff_id = Digest::of(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": arch(),
        "os": "linux",
        "created": "2000-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [
            {"created": "2000-01-01T00:00:00Z", "created_by": "busybox-static, /bin and the usual directories"},
            {"created": "2000-01-01T00:00:00Z", "created_by": "CMD [\"sh\"]", "empty_layer": true},
        ],
    }))
    .expect("base config as JSON");
    let config_name = format!("{}.json", Digest::of(&config).hex());
    let layer_name = format!("{}/layer.tar", diff_id.hex());
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [NAME],
        "Layers": [layer_name],
    }]))
    .expect("manifest as JSON");

    let mut archive = tar::Builder::new(Vec::new());
    append_file(&mut archive, "manifest.json", &manifest);
    append_file(&mut archive, &config_name, &config);
    append_file(&mut archive, &layer_name, &layer);
    let bytes = archive.into_inner().expect("base archive in memory");
    fs::write(path, bytes).expect("writing the base archive");
}

/// Docker's name for this machine's architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn append_file(archive: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(BASE_TIME);
    archive
        .append_data(&mut header, name, data)
        .expect("archive entry in memory");
}

/// The root filesystem as a plain tar, entries sorted as a layer's are.
fn rootfs_tar() -> Vec<u8> {
    let mut layer = tar::Builder::new(Vec::new());
    let mut dir = |name: &str, mode: u32, owner: u64| {
        let mut header = header(tar::EntryType::Directory, mode, owner);
        layer
            .append_data(&mut header, name, std::io::empty())
            .expect("layer entry in memory");
    };
    dir("./", 0o755, 0);
    dir("bin/", 0o755, 0);
    for name in ["dev/", "etc/", "home/", "proc/", "sys/", "usr/", "var/"] {
        dir(name, 0o755, 0);
    }
    dir("home/app/", 0o755, 1000);
    dir("root/", 0o700, 0);
    dir("tmp/", 0o1777, 0);
    let busybox = fs::read("/bin/busybox").expect("reading /bin/busybox");
    let mut file = |name: &str, mode: u32, data: &[u8]| {
        let mut header = header(tar::EntryType::Regular, mode, 0);
        header.set_size(data.len() as u64);
        layer
            .append_data(&mut header, name, data)
            .expect("layer entry in memory");
    };
    file("bin/busybox", 0o755, &busybox);
    file(
        "etc/group",
        0o644,
        b"root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    );
    file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
    );
    for applet in APPLETS {
        let mut header = header(tar::EntryType::Symlink, 0o777, 0);
        layer
            .append_link(&mut header, format!("bin/{applet}"), "busybox")
            .expect("layer entry in memory");
    }
    layer.into_inner().expect("layer in memory")
}

fn header(kind: tar::EntryType, mode: u32, owner: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(owner);
    header.set_gid(owner);
    header.set_mtime(BASE_TIME);
    header.set_size(0);
    header
}
