//! `SOURCE_DATE_EPOCH`, from a build arg or the Dockerfile's global `ARG`
//! default, as BuildKit resolves it (`dockerfile2llb/epoch.go`): seconds
//! since the epoch; `context`, the build context's own time (a Git
//! context's commit, a downloaded context's `Last-Modified` or newest
//! file; none for a local directory); empty, unset. Anything else is an
//! error — a typo never builds with the wrong time.

use super::error::ConvertErrorKind as Kind;

/// The argument's name.
pub(crate) const NAME: &str = "SOURCE_DATE_EPOCH";

/// `value` as seconds since the epoch; `context_time` is what `context`
/// means for this build.
pub(crate) fn resolve(value: &str, context_time: Option<u64>) -> Result<Option<u64>, Kind> {
    if value.is_empty() {
        return Ok(None);
    }
    if value == "context" {
        return Ok(context_time);
    }
    value
        .parse::<u64>()
        .map(Some)
        .map_err(|_| Kind::InvalidEpoch(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_context_and_nothing_else() {
        assert_eq!(resolve("1700000000", None), Ok(Some(1_700_000_000)));
        assert_eq!(resolve("0", Some(5)), Ok(Some(0)));
        assert_eq!(resolve("", Some(5)), Ok(None));
        assert_eq!(resolve("context", Some(5)), Ok(Some(5)));
        assert_eq!(resolve("context", None), Ok(None));
        for bad in ["not-a-time", "-1", "1.5", " 1", "Context"] {
            assert_eq!(
                resolve(bad, None),
                Err(Kind::InvalidEpoch(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
