//! Platforms as `os/arch[/variant]` strings (`linux/amd64`, `linux/arm/v7`).

pub use kiln_proto::ops::v1::Platform;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/amd64")]
pub struct PlatformError(pub String);

/// The longest platform text parsed: real ones are a few dozen bytes
/// (`linux/arm64/v8`), and they come from image indexes and farm workers
/// too, whose text is not trusted.
pub const MAX_LEN: usize = 128;

/// Parses `os/arch[/variant]` or a bare `arch` (Linux), normalizing
/// architecture aliases (`x86_64` → `amd64`, `aarch64` → `arm64`).
pub fn parse(text: &str) -> Result<Platform, PlatformError> {
    if text.len() > MAX_LEN {
        let shown: String = text.chars().take(MAX_LEN).collect();
        return Err(PlatformError(format!("{shown}…")));
    }
    let bad = || PlatformError(text.to_owned());
    let parts: Vec<&str> = text.split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [arch] => ("linux", *arch, ""),
        [os, arch] => (*os, *arch, ""),
        [os, arch, variant] => (*os, *arch, *variant),
        _ => return Err(bad()),
    };
    // A component of dots names nothing (and would be a path's `..` where
    // a platform names a directory, as `-o type=local` does).
    let dots = |part: &str| !part.is_empty() && part.bytes().all(|b| b == b'.');
    if os.is_empty()
        || arch.is_empty()
        || [os, arch, variant].into_iter().any(dots)
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-.".contains(&b))
    {
        return Err(bad());
    }
    let (arch, variant) = normalize_arch(&arch.to_ascii_lowercase(), &variant.to_ascii_lowercase());
    Ok(Platform {
        os: os.to_ascii_lowercase(),
        architecture: arch,
        variant,
    })
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let (arch, variant) = match (arch, variant) {
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "v8") => ("arm64", ""),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "") => ("arm", "v7"),
        ("i386" | "i686" | "386", v) => ("386", v),
        (a, v) => (a, v),
    };
    (arch.to_owned(), variant.to_owned())
}

/// `os/arch[/variant]`.
pub fn format(platform: &Platform) -> String {
    let mut s = format!("{}/{}", platform.os, platform.architecture);
    if !platform.variant.is_empty() {
        s.push('/');
        s.push_str(&platform.variant);
    }
    s
}

/// The platform this program was built for (builds default to it).
pub fn host() -> Platform {
    let (arch, variant) = normalize_arch(std::env::consts::ARCH, "");
    Platform {
        os: std::env::consts::OS.to_owned(),
        architecture: arch,
        variant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(format(&parse("linux/amd64").unwrap()), "linux/amd64");
        assert_eq!(format(&parse("linux/x86_64").unwrap()), "linux/amd64");
        assert_eq!(format(&parse("linux/arm").unwrap()), "linux/arm/v7");
        assert_eq!(format(&parse("arm64").unwrap()), "linux/arm64");
        for dots in ["../amd64", "linux/..", "linux/arm/.", "linux/.../v7"] {
            assert!(parse(dots).is_err(), "{dots}");
        }
        let long = format!("linux/{}", "a".repeat(MAX_LEN));
        let refused = parse(&long).unwrap_err().to_string();
        assert!(refused.len() < 2 * MAX_LEN, "{refused}");
        assert_eq!(format(&parse("linux/aarch64/v8").unwrap()), "linux/arm64");
        assert!(parse("linux/").is_err());
        assert!(parse("a/b/c/d").is_err());
        assert!(parse("linux/$X").is_err());
    }
}
