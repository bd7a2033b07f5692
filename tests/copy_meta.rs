//! Owners and modes of what COPY and ADD make (issue 14, items 6 and 18),
//! as BuildKit's copy: a directory's contents are copied, not the
//! directory; directories made to hold them are 0755 (a numeric `--chmod`'s
//! mode, as fsutil's MkdirAll since BuildKit 0.13) and `--chown`'s or
//! root's; a destination that exists keeps its owner and mode; `ADD
//! --chown` owns every entry of an unpacked archive; a numeric `--chown`
//! user without a group is its own group.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::busybox::{Setup, ready};

/// Builds `dockerfile`, whose last step writes `/report`; returns it.
fn report(s: &Setup, dockerfile: &str) -> String {
    fs::read_to_string(s.build_to_dir(dockerfile, &[]).join("report")).unwrap()
}

const STAGE: &str = "FROM base:busybox AS s\n\
    RUN mkdir /dir && echo f > /dir/f && chown -R 1000:1000 /dir && chmod 0700 /dir\n";

#[test]
fn copied_directories_are_made_as_buildkit_makes_them() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    fs::create_dir_all(s.context.join("sub/dir1")).unwrap();
    fs::write(s.context.join("sub/dir1/in"), "in").unwrap();
    fs::set_permissions(
        s.context.join("sub/dir1"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let dockerfile = format!(
        "{STAGE}FROM base:busybox\n\
         RUN mkdir /existing && chown 5:6 /existing && chmod 0750 /existing\n\
         COPY --from=s /dir /newdir\n\
         COPY --chown=300:400 --from=s /dir/. /existing\n\
         COPY sub/dir1/ subdest4\n\
         COPY --chmod=0644 --from=s /dir /chmodded\n\
         COPY --chown=4242 sub/dir1/in /uid-only\n\
         RUN stat -c '%n %u:%g %a' /newdir /newdir/f /existing /existing/f /subdest4 /subdest4/in /chmodded /chmodded/f /uid-only > /report\n"
    );
    assert_eq!(
        report(&s, &dockerfile),
        "/newdir 0:0 755\n/newdir/f 1000:1000 644\n\
         /existing 5:6 750\n/existing/f 300:400 644\n\
         /subdest4 0:0 755\n/subdest4/in 0:0 644\n\
         /chmodded 0:0 644\n/chmodded/f 1000:1000 644\n\
         /uid-only 4242:4242 644\n"
    );
}

#[test]
fn add_chown_owns_every_entry_of_an_archive() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(8);
    h.set_mode(0o644);
    h.set_uid(7);
    h.set_gid(8);
    tar.append_data(&mut h, "foo", &b"content0"[..]).unwrap();
    let mut d = tar::Header::new_gnu();
    d.set_entry_type(tar::EntryType::Directory);
    d.set_size(0);
    d.set_mode(0o750);
    tar.append_data(&mut d, "sub/", &[][..]).unwrap();
    fs::write(s.context.join("t.tar"), tar.into_inner().unwrap()).unwrap();
    let dockerfile = "FROM base:busybox\n\
        ADD --chown=100:200 t.tar /out/\n\
        ADD t.tar /plain/\n\
        RUN stat -c '%n %u:%g' /out /out/foo /out/sub /plain/foo > /report\n";
    assert_eq!(
        report(&s, dockerfile),
        "/out 100:200\n/out/foo 100:200\n/out/sub 100:200\n/plain/foo 7:8\n"
    );
}
