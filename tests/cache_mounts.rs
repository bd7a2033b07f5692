//! Cache mounts as BuildKit keys and seeds them (issue 14, items 4, 21
//! and 22): `from=`/`source=` seed a new cache from a stage, `uid`, `gid`
//! and `mode` make another cache than the same id without them, and steps
//! in parallel stages can nest cache mounts.

use std::fs;

use crate::busybox::{Setup, ready};

fn read(dir: &std::path::Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn a_cache_seeded_from_a_stage_starts_as_it_and_keeps_its_writes() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "FROM base:busybox AS seed\n\
        RUN mkdir -p /data && echo seeded > /data/file && ln -s ../../../.. /escape\n\
        FROM base:busybox\n\
        RUN --mount=type=cache,target=/c,from=seed,source=/data cat /c/file > /seen && echo more > /c/added\n\
        RUN --mount=type=cache,target=/c,from=seed,source=/data cat /c/added > /kept\n\
        RUN --mount=type=cache,target=/c ls /c > /unseeded\n\
        RUN --mount=type=cache,target=/h,from=seed,source=/escape/etc test ! -e /h/os-release && cat /h/passwd > /seed-etc\n\
        COPY --from=seed /data /seed-data\n";
    let dest = s.build_to_dir(dockerfile, &[]);
    assert_eq!(read(&dest, "seen"), "seeded\n");
    assert_eq!(read(&dest, "kept"), "more\n");
    assert_eq!(
        read(&dest, "unseeded"),
        "",
        "the same id unseeded is another cache"
    );
    // A symlink in the seed leads inside the seed's layers, never to the host.
    assert!(read(&dest, "seed-etc").contains("app:x:1000"));
    // The seed stage's layers are as they were.
    assert!(!dest.join("seed-data/added").exists());
    assert_eq!(read(&dest, "seed-data/file"), "seeded\n");
}

#[test]
fn owner_and_mode_make_another_cache() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dest = s.build_to_dir("FROM base:busybox\n\
         RUN --mount=type=cache,target=/c touch /c/made-by-root\n\
         RUN --mount=type=cache,target=/c,uid=1001,gid=1002,mode=0751 stat -c '%u %g %a' /c > /owner && ls /c > /listed\n", &[]);
    assert_eq!(read(&dest, "owner"), "1001 1002 751\n");
    assert_eq!(read(&dest, "listed"), "");
}

/// Parallel stages whose steps nest cache mounts (`/foo/bar` and
/// `/foo/bar/baz`) make the inner mount point in the shared outer cache
/// at once; the race is held by `fileop::tests::mkdir_all_races_with_another_maker`.
#[test]
fn parallel_stages_nest_cache_mounts() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let mut dockerfile = String::new();
    for stage in ["a", "b", "c", "d"] {
        dockerfile.push_str(&format!(
            "FROM base:busybox AS {stage}\n\
             RUN --mount=type=cache,target=/foo/bar --mount=type=cache,target=/foo/bar/baz echo {stage} > /{stage}\n"
        ));
    }
    dockerfile.push_str("FROM base:busybox\n");
    for stage in ["a", "b", "c", "d"] {
        dockerfile.push_str(&format!("COPY --from={stage} /{stage} /{stage}\n"));
    }
    for _ in 0..3 {
        let dest = s.build_to_dir(&dockerfile, &[]);
        assert_eq!(read(&dest, "d"), "d\n");
        let _ = fs::remove_dir_all(s.root.join("cache-mounts"));
        let out = s.kiln(&["prune", "-a"]);
        assert!(out.status.success());
    }
}
