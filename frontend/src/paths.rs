//! Slash-separated paths as Go's `path` package handles them.

/// `path.Clean`: the shortest equivalent path (no `.`, no `x/..`, no `//`).
/// An absolute path stays inside `/` (`/../a` is `/a`).
pub(crate) fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

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

/// The last segment of a slash path.
pub(crate) fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean("/a/./b/../c//"), "/a/c");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("a/../../b"), "../b");
        assert_eq!(clean(""), ".");
        assert_eq!(resolve_dest("/app", "."), "/app/");
        assert_eq!(resolve_dest("/app", "x/"), "/app/x/");
        assert_eq!(resolve_dest("/app", "/x"), "/x");
        assert_eq!(resolve_dest("/", "a"), "/a");
        assert_eq!(in_context("/a/../b"), Some("/b".into()));
        assert_eq!(in_context("."), Some("/".into()));
        assert_eq!(in_context("../x"), None);
        assert_eq!(in_context("a/../../x"), None);
        assert_eq!(base_name("/a/b/"), "b");
    }
}
