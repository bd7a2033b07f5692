//! Slash-separated paths as Go's `path` package handles them: how the
//! graph's paths and patterns are written (the frontend) and read (the
//! worker, the context walks).

/// `path.Clean`: the shortest equivalent path (no `.`, no `x/..`, no `//`).
/// An absolute path stays inside `/` (`/../a` is `/a`).
pub fn clean(path: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn cleaning() {
        assert_eq!(clean("/a/./b/../c//"), "/a/c");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("a/../../b"), "../b");
        assert_eq!(clean(""), ".");
    }
}
