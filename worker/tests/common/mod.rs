//! What the worker's integration tests share: a busybox root filesystem.

// Each test crate uses a part of this module.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "ls", "mount", "rm", "mkdir", "hostname", "ps", "sleep", "nc",
    "pwd", "touch", "test", "grep", "wc", "true", "env", "chmod", "stat",
];

/// Whether the sandbox tests can run (root, busybox); when not, the test
/// is skipped (or fails under `KILN_REQUIRE_ALL=1`).
pub(crate) fn ready() -> bool {
    kiln_testing::require(&[kiln_testing::Need::Root, kiln_testing::Need::Busybox])
}

/// A busybox root filesystem with a user `app` (1000) in group `staff`.
pub(crate) fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("busybox");
    for d in ["bin", "etc", "tmp", "home/app", "dir"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )
    .unwrap();
    fs::write(root.join("delete.me"), "bye").unwrap();
    fs::write(root.join("dir/old"), "old").unwrap();
    root
}
