//! `ADD` of a Git source in the query form of Dockerfile 1.18
//! (`REPO.git?ref=…&subdir=…`, also `tag=`, `branch=`, `keep-git-dir`;
//! issue 14, item 13): fetched with git, not downloaded as a web page.

use std::fs;

use kiln_testing::{Need, require};

use crate::busybox::Setup;
use crate::httpd::Httpd;
use crate::instructions::served_repo;

#[test]
fn add_git_in_the_query_form() {
    if !require(&[Need::Root, Need::Busybox, Need::Tool("git")]) {
        return;
    }
    let s = Setup::new();
    let served = s.dir.path().join("served");
    fs::create_dir_all(&served).unwrap();
    served_repo(&s.dir.path().join("work"), &served);
    let http = Httpd::serve(&served);
    let git = http.url("repo.git");
    let dockerfile = format!(
        "FROM base:busybox\n\
         ADD {git}?ref=v1&subdir=docs /by-ref/\n\
         ADD {git}?tag=v1&subdir=docs /by-tag/\n\
         ADD {git}?branch=main&subdir=docs /by-branch/\n\
         ADD {git}?keep-git-dir=true /repo/\n"
    );
    let dest = s.build_to_dir(&dockerfile, &[]);
    let read = |p: &str| fs::read_to_string(dest.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("by-ref/guide.md"), "v1 guide\n");
    assert_eq!(read("by-tag/guide.md"), "v1 guide\n");
    assert_eq!(read("by-branch/guide.md"), "v2 guide\n");
    assert!(dest.join("repo/.git").is_dir() && dest.join("repo/README").is_file());

    // A query BuildKit refuses is refused, naming the line.
    let out = s.build(
        &format!("FROM base:busybox\nADD {git}?tag=v1&branch=main /x/\n"),
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("branch conflicts with tag"),
        "{stderr}"
    );
}
