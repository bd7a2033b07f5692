//! Which checks run and whether a violation fails the build: the
//! `# check=` directive, the `BUILDKIT_DOCKERFILE_CHECK` build argument
//! (which replaces it), and `# check=` comments right before one
//! instruction (which add to it for that instruction). BuildKit's
//! `linter.ParseLintOptions` and `WithMergedConfigFromComments`.

use std::collections::BTreeSet;

use super::{CheckError, Rule};

/// The build argument that replaces the `# check=` directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// `skip=R1,R2|all;error=true|false;experimental=R1,R2|all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: BTreeSet<String>,
    pub experimental_all: bool,
    pub experimental: BTreeSet<String>,
    /// `error=true`: any violation fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses a `# check=` value (BuildKit's `ParseLintOptions`).
    pub fn parse(text: &str) -> Result<Self, CheckError> {
        let text = text.trim();
        let mut config = Self::default();
        if text.is_empty() {
            return Ok(config);
        }
        let invalid = |option: &str| CheckError::Options {
            value: text.to_owned(),
            reason: format!("invalid check option {option:?}"),
        };
        // Go's SplitN(…, 3): a third `;` stays in the last part.
        for part in text.splitn(3, ';') {
            let (key, value) = part.split_once('=').ok_or_else(|| invalid(part))?;
            let value = value.trim();
            match key.trim() {
                "skip" if value == "all" => config.skip_all = true,
                "skip" => config.skip = names(value),
                "experimental" if value == "all" => config.experimental_all = true,
                "experimental" => config.experimental = names(value),
                "error" => config.error = parse_bool(value).ok_or_else(|| invalid(part))?,
                other => return Err(invalid(other)),
            }
        }
        Ok(config)
    }

    /// The configuration of a build: `BUILDKIT_DOCKERFILE_CHECK` when
    /// given, else the `# check=` directive.
    pub fn for_build(
        directive: Option<&str>,
        build_args: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, CheckError> {
        match build_args.get(CHECK_BUILD_ARG) {
            Some(value) => Self::parse(value),
            None => Self::parse(directive.unwrap_or_default()),
        }
    }

    /// This configuration with the first `# check=` comment among
    /// `comments` added (skips and experimental rules only; an invalid one
    /// is ignored, as BuildKit does).
    pub(super) fn with_comments(&self, comments: &[String]) -> std::borrow::Cow<'_, Self> {
        let Some(local) = comments.iter().find_map(|c| comment_config(c)) else {
            return std::borrow::Cow::Borrowed(self);
        };
        let Ok(local) = local else {
            return std::borrow::Cow::Borrowed(self);
        };
        let mut merged = self.clone();
        merged.skip_all |= local.skip_all;
        merged.experimental_all |= local.experimental_all;
        merged.skip.extend(local.skip);
        merged.experimental.extend(local.experimental);
        std::borrow::Cow::Owned(merged)
    }

    /// Whether `rule` runs under this configuration.
    pub(super) fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !self.skip_all && !self.skip.contains(rule.name)
        }
    }
}

/// A comment (without its `#`) that is a `check=` directive: its options
/// up to the first space (what follows is the author's remark).
fn comment_config(comment: &str) -> Option<Result<CheckConfig, CheckError>> {
    let (name, value) = comment.split_once('=')?;
    if !name.trim().eq_ignore_ascii_case("check") {
        return None;
    }
    let value = value.trim();
    let value = value.split(' ').next().unwrap_or_default();
    Some(CheckConfig::parse(value))
}

fn names(list: &str) -> BTreeSet<String> {
    list.split(',').map(|n| n.trim().to_owned()).collect()
}

/// Go's `strconv.ParseBool`.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let c = CheckConfig::parse("skip=A, B;error=true").unwrap();
        assert_eq!(c.skip, names("A,B"));
        assert!(c.error && !c.skip_all);
        assert!(CheckConfig::parse("skip=all").unwrap().skip_all);
        assert_eq!(CheckConfig::parse("").unwrap(), CheckConfig::default());
        assert!(CheckConfig::parse("error=maybe").is_err());
        assert!(CheckConfig::parse("nope=1").is_err());
        assert!(CheckConfig::parse("skip").is_err());
    }

    #[test]
    fn build_arg_replaces_directive() {
        let mut args = std::collections::BTreeMap::new();
        args.insert(CHECK_BUILD_ARG.to_owned(), "skip=all".to_owned());
        let c = CheckConfig::for_build(Some("error=true"), &args).unwrap();
        assert!(c.skip_all && !c.error);
        let c = CheckConfig::for_build(Some("error=true"), &Default::default()).unwrap();
        assert!(c.error);
    }

    #[test]
    fn comments_add_skips() {
        let base = CheckConfig::parse("error=true").unwrap();
        let local = base.with_comments(&["check=skip=X // why".to_owned()]);
        assert!(local.skip.contains("X") && local.error);
        let same = base.with_comments(&["just words".to_owned()]);
        assert_eq!(*same, base);
    }
}
