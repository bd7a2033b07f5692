//! Slash-separated paths as Go's `path` package handles them.

pub(crate) use kiln_proto::path::clean;

/// `path` made absolute against `dir`, cleaned; a trailing `/` (or a path of
/// `.`) is kept as a trailing `/`, since for COPY it means "a directory".
pub(crate) fn resolve_dest(dir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        clean(path)
    } else {
        clean(&format!("{dir}/{path}"))
    };
    let wants_dir = path.is_empty() || path == "." || path.ends_with('/') || path.ends_with("/.");
    if wants_dir && !joined.ends_with('/') {
        format!("{joined}/")
    } else {
        joined
    }
}

/// A path in the build context, as an absolute path inside it; `None` when
/// it climbs out (`../x`).
pub(crate) fn in_context(path: &str) -> Option<String> {
    let relative = clean(path.trim_start_matches('/'));
    if relative == ".." || relative.starts_with("../") {
        return None;
    }
    Some(if relative == "." {
        "/".to_owned()
    } else {
        format!("/{relative}")
    })
}

/// A `COPY --parents` source as the worker takes it, `PARENT/./PATTERN`:
/// split at its first `/./` (BuildKit's pivot: only what follows it is
/// kept under the destination), else `/` and the whole path; `parent`
/// makes the part before it a source path (`in_context`, or absolute in a
/// stage), the pattern is cleaned and may not climb out of it.
pub(crate) fn with_pivot(path: &str, parent: impl Fn(&str) -> Option<String>) -> Option<String> {
    let (before, pattern) = path.split_once("/./").unwrap_or(("/", path));
    let before = parent(if before.is_empty() { "/" } else { before })?;
    let pattern = clean(pattern.trim_start_matches('/'));
    if pattern == ".." || pattern.starts_with("../") {
        return None;
    }
    let pattern = if pattern == "." { "" } else { &pattern };
    Some(format!("{}/./{pattern}", before.trim_end_matches('/')))
}

/// The last segment of a slash path.
pub(crate) fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(resolve_dest("/app", "."), "/app/");
        assert_eq!(resolve_dest("/app", "x/"), "/app/x/");
        assert_eq!(resolve_dest("/app", "/x"), "/x");
        assert_eq!(resolve_dest("/", "a"), "/a");
        assert_eq!(in_context("/a/../b"), Some("/b".into()));
        assert_eq!(in_context("."), Some("/".into()));
        assert_eq!(in_context("../x"), None);
        assert_eq!(in_context("a/../../x"), None);
        assert_eq!(base_name("/a/b/"), "b");
        let ctx = |p: &str| with_pivot(p, in_context);
        assert_eq!(ctx("./src/./pkg/*.go"), Some("/src/./pkg/*.go".into()));
        assert_eq!(ctx("foo1/foo2/ba*"), Some("/./foo1/foo2/ba*".into()));
        assert_eq!(
            ctx("/test/a/b*/./c/**/bar"),
            Some("/test/a/b*/./c/**/bar".into())
        );
        assert_eq!(ctx("/a/./b/./c"), Some("/a/./b/c".into()));
        assert_eq!(ctx("/a/b/c/d/."), Some("/./a/b/c/d".into()));
        assert_eq!(ctx("/./x/../y"), Some("/./y".into()));
        assert_eq!(ctx("../x/./y"), None);
        assert_eq!(ctx("x/./../../y"), None);
    }
}
