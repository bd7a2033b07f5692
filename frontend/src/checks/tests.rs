//! Cases from BuildKit's `frontend/dockerfile/dockerfile_check_test.go`:
//! each expects the rule, message and line BuildKit's does.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::convert::{ImageConfig, ResolvedImage};
use crate::reference::Reference;

fn amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        ..Platform::default()
    }
}

fn report_with(text: &str, args: &[(&str, &str)], ignore: &[&str]) -> Report {
    let df = parser::parse(text).unwrap();
    let args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let ignore: Vec<String> = ignore.iter().map(|s| (*s).to_owned()).collect();
    let mut options = CheckOptions::new(&args);
    options.dockerignore = &ignore;
    options.build_platform = amd64();
    options.target_platform = amd64();
    run(&df, &options).unwrap()
}

/// `(rule, message, line)` of every violation.
fn lint(text: &str) -> Vec<(String, String, usize)> {
    flat(&report_with(text, &[], &[]))
}

fn flat(report: &Report) -> Vec<(String, String, usize)> {
    report
        .violations
        .iter()
        .map(|v| (v.rule.clone(), v.message.clone(), v.location.start))
        .collect()
}

fn one(rule: &str, message: &str, line: usize) -> Vec<(String, String, usize)> {
    vec![(rule.to_owned(), message.to_owned(), line)]
}

#[test]
fn stage_name_casing_and_from_as_casing() {
    assert_eq!(
        lint("\nFROM scratch AS BadStageName\nFROM scratch as base2\nFROM scratch AS base3\n"),
        vec![
            (
                "StageNameCasing".into(),
                "Stage name 'BadStageName' should be lowercase".into(),
                2
            ),
            (
                "FromAsCasing".into(),
                "'as' and 'FROM' keywords' casing do not match".into(),
                3
            ),
        ]
    );
    assert_eq!(
        lint("from scratch AS base\nfrom scratch as base2\n"),
        one(
            "FromAsCasing",
            "'AS' and 'from' keywords' casing do not match",
            1
        )
    );
    assert!(lint("FROM scratch AS a\nFROM scratch AS b\n").is_empty());
}

#[test]
fn no_empty_continuation() {
    assert_eq!(
        lint("\nFROM scratch\n# a comment\nCOPY Dockerfile \\\n.\nCOPY Dockerfile \\\n\n.\n"),
        one("NoEmptyContinuation", "Empty continuation line", 8)
    );
}

#[test]
fn consistent_instruction_casing() {
    let rule = "ConsistentInstructionCasing";
    assert_eq!(
        lint("From scratch as base\nFROM scratch AS base2\n"),
        one(
            rule,
            "Command 'From' should match the case of the command majority (uppercase)",
            1
        )
    );
    assert_eq!(
        lint("FROM scratch\ncopy Dockerfile /foo\nCOPY Dockerfile /bar\n"),
        one(
            rule,
            "Command 'copy' should match the case of the command majority (uppercase)",
            2
        )
    );
    assert_eq!(
        lint("FROM scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\ncopy Dockerfile /baz\n"),
        one(
            rule,
            "Command 'FROM' should match the case of the command majority (lowercase)",
            1
        )
    );
    assert!(lint("from scratch\ncopy Dockerfile /foo\ncopy Dockerfile /bar\n").is_empty());
}

#[test]
fn duplicate_and_reserved_stage_names() {
    assert_eq!(
        lint("FROM scratch AS b\nFROM scratch AS b\n"),
        one(
            "DuplicateStageName",
            "Duplicate stage name \"b\", stage names should be unique",
            2
        )
    );
    assert_eq!(
        lint("FROM scratch AS scratch\nFROM scratch AS context\n"),
        vec![
            (
                "ReservedStageName".into(),
                "Stage name should not use the same name as reserved stage \"scratch\"".into(),
                1
            ),
            (
                "ReservedStageName".into(),
                "Stage name should not use the same name as reserved stage \"context\"".into(),
                2
            ),
        ]
    );
    assert!(lint("FROM scratch\nFROM scratch AS a\n").is_empty());
}

#[test]
fn json_args_recommended() {
    assert_eq!(
        lint("FROM scratch\nCMD mycommand\n"),
        one(
            "JSONArgsRecommended",
            "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals",
            2
        )
    );
    assert_eq!(lint("FROM scratch\nENTRYPOINT mycommand\n").len(), 1);
    assert!(lint("FROM scratch\nSHELL [\"/usr/bin/customshell\"]\nCMD mycommand\n").is_empty());
    assert!(
        lint("FROM scratch AS base\nSHELL [\"/bin/x\"]\nFROM base\nENTRYPOINT mycommand\n")
            .is_empty()
    );
    assert!(lint("FROM scratch\n# check=skip=JSONArgsRecommended\nCMD mycommand\n").is_empty());
}

#[test]
fn maintainer_deprecated() {
    assert_eq!(
        lint("FROM scratch\nMAINTAINER me@example.org\n"),
        one(
            "MaintainerDeprecated",
            "Maintainer instruction is deprecated in favor of using label",
            2
        )
    );
    assert!(lint("FROM scratch\nLABEL org.opencontainers.image.authors=\"me\"\n").is_empty());
}

#[test]
fn warnings_before_an_invalid_instruction() {
    let found = lint("FROM scratch AS BadStageName\nMAINTAINER me@example.org\nBADCMD\n");
    let rules: Vec<&str> = found.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(rules, ["StageNameCasing", "MaintainerDeprecated"]);
}

#[test]
fn undefined_arg_in_from() {
    assert!(lint("ARG base=scratch\nFROM $base\nCOPY Dockerfile .\n").is_empty());
    assert!(lint("FROM --platform=$BUILDPLATFORM scratch\n").is_empty());
    assert!(lint("ARG DEBUG\nFROM scratch${DEBUG}\n").is_empty());
    assert!(lint("ARG DEBUG\nFROM scra${DEBUG:-tch}\n").is_empty());
    assert_eq!(
        lint("FROM --platform=$BULIDPLATFORM scratch\n"),
        one(
            "UndefinedArgInFrom",
            "FROM argument 'BULIDPLATFORM' is not declared (did you mean BUILDPLATFORM?)",
            1
        )
    );
    assert_eq!(
        lint("ARG MY_OS=linux\nARG MY_ARCH=amd64\nFROM --platform=linux/${MYARCH} busybox\n"),
        one(
            "UndefinedArgInFrom",
            "FROM argument 'MYARCH' is not declared (did you mean MY_ARCH?)",
            3
        )
    );
    assert_eq!(
        lint("ARG tag=latest\nFROM busybox:${tag}${version} AS b\n"),
        one(
            "UndefinedArgInFrom",
            "FROM argument 'version' is not declared",
            2
        )
    );
}

#[test]
fn workdir_relative_path() {
    assert_eq!(
        lint("FROM scratch\nWORKDIR app/\n"),
        one(
            "WorkdirRelativePath",
            "Relative workdir \"app/\" can have unexpected results if the base image changes",
            2
        )
    );
    assert!(lint("FROM scratch AS a\nWORKDIR /app\nFROM a AS b\nWORKDIR subdir/\n").is_empty());
    assert!(lint("FROM scratch\n# check=skip=WorkdirRelativePath\nWORKDIR app/\n").is_empty());
}

#[test]
fn undefined_var() {
    assert!(lint("FROM scratch\nARG foo\nCOPY Dockerfile${foo} .\n").is_empty());
    assert!(lint("FROM scratch AS base\nARG foo=Dockerfile\nFROM base\nCOPY $foo .\n").is_empty());
    assert!(lint("FROM scratch\nRUN echo $PATH\n").is_empty());
    assert_eq!(
        lint("FROM scratch\nCOPY $foo .\nARG foo=bar\nRUN echo $foo\n"),
        one("UndefinedVar", "Usage of undefined variable '$foo'", 2)
    );
    assert_eq!(
        lint(
            "FROM scratch\nARG DIR_BINARIES=binaries/\nARG DIR_ASSETS=assets/\nARG DIR_CONFIG=config/\nCOPY $DIR_ASSET .\n"
        ),
        one(
            "UndefinedVar",
            "Usage of undefined variable '$DIR_ASSET' (did you mean $DIR_ASSETS?)",
            5
        )
    );
    assert_eq!(
        lint("FROM scratch\nENV PATH=$PAHT:/tmp/bin\n"),
        one(
            "UndefinedVar",
            "Usage of undefined variable '$PAHT' (did you mean $PATH?)",
            2
        )
    );
}

#[test]
fn undefined_var_only_in_the_stages_built() {
    let text = "FROM scratch AS first\nCOPY $foo .\nFROM scratch AS second\nCOPY $bar .\n";
    let df = parser::parse(text).unwrap();
    let args = BTreeMap::new();
    let built = BTreeSet::from([1]);
    let mut options = CheckOptions::new(&args);
    options.stages = Some(&built);
    let found = flat(&run(&df, &options).unwrap());
    assert_eq!(
        found,
        one("UndefinedVar", "Usage of undefined variable '$bar'", 4)
    );
    assert_eq!(lint(text).len(), 2, "--check looks at every stage");
}

/// A resolver that knows one image, with an ENV.
struct OneImage;

impl ImageResolver for OneImage {
    fn resolve(&self, r: &Reference, _: &Platform) -> Result<Option<ResolvedImage>, String> {
        Ok(
            (r.repository() == "docker.io/library/busybox").then(|| ResolvedImage {
                digest: None,
                config: ImageConfig {
                    env: Some(vec!["FROM_IMAGE=1".into()]),
                    ..ImageConfig::default()
                },
            }),
        )
    }
}

#[test]
fn undefined_var_knows_the_base_image_env() {
    let df = parser::parse("FROM busybox\nCOPY $FROM_IMAGE$NOPE .\n").unwrap();
    let args = BTreeMap::new();
    let mut options = CheckOptions::new(&args);
    options.resolver = Some(&OneImage);
    assert_eq!(
        flat(&run(&df, &options).unwrap()),
        one("UndefinedVar", "Usage of undefined variable '$NOPE'", 2)
    );
    // An image nobody resolved: its variables are unknown, so nothing is said.
    let df = parser::parse("FROM alpine\nCOPY $FROM_IMAGE .\n").unwrap();
    assert!(run(&df, &options).unwrap().violations.is_empty());
}

#[test]
fn multiple_instructions_disallowed() {
    let text = "FROM scratch\nENTRYPOINT [\"/myapp\"]\nENTRYPOINT [\"/myotherapp\"]\nCMD [\"/myapp\"]\nCMD [\"/myotherapp\"]\nHEALTHCHECK CMD [\"/myapp\"]\nHEALTHCHECK CMD [\"/myotherapp\"]\n";
    let message = |i: &str| {
        format!(
            "Multiple {i} instructions should not be used in the same stage because only the last one will be used"
        )
    };
    assert_eq!(
        lint(text),
        vec![
            (
                "MultipleInstructionsDisallowed".into(),
                message("ENTRYPOINT"),
                2
            ),
            ("MultipleInstructionsDisallowed".into(), message("CMD"), 4),
            (
                "MultipleInstructionsDisallowed".into(),
                message("HEALTHCHECK"),
                6
            ),
        ]
    );
    let stages = "FROM scratch AS a\nCMD [\"/a\"]\nFROM a AS b\nCMD [\"/b\"]\n";
    assert!(lint(stages).is_empty());
}

#[test]
fn legacy_key_value_format() {
    assert_eq!(
        lint("FROM scratch\nENV testkey value\nLABEL key value\n"),
        vec![
            (
                "LegacyKeyValueFormat".into(),
                "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"
                    .into(),
                2
            ),
            (
                "LegacyKeyValueFormat".into(),
                "\"LABEL key=value\" should be used instead of legacy \"LABEL key value\" format"
                    .into(),
                3
            ),
        ]
    );
    assert!(lint("FROM scratch\nENV testkey=value\nLABEL key=value\n").is_empty());
    assert!(
        lint("FROM scratch\n# check=skip=LegacyKeyValueFormat\nENV testkey value\n").is_empty()
    );
}

#[test]
fn redundant_target_platform() {
    assert_eq!(
        lint("FROM --platform=$TARGETPLATFORM scratch\n"),
        one(
            "RedundantTargetPlatform",
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
            1
        )
    );
    assert_eq!(lint("FROM --platform=${TARGETPLATFORM} scratch\n").len(), 1);
    assert!(
        lint("# check=skip=RedundantTargetPlatform\nFROM --platform=$TARGETPLATFORM scratch\n")
            .is_empty()
    );
}

#[test]
fn secrets_used_in_arg_or_env() {
    let text = "# check=skip=InvalidDefinitionDescription\nFROM scratch\nARG SECRET_PASSPHRASE\nENV SUPER_Secret=foo\nENV password=bar secret=baz\nARG super_duper_secret_token=foo auth=bar\nENV apikey=bar sunflower=foo\nENV git_key=\nENV PUBLIC_KEY=\nARG public_token\nARG SECRET_PASSPHRASE_FILE\nENV password_file=bar secret_File=baz\nARG AUTH_MODULE_VERSION\n# check=skip=SecretsUsedInArgOrEnv // allow secret in environment\nENV password=bar\n# check=skip=all // is local to only this instruction\nARG alternate_password\n";
    let found: Vec<(String, usize)> = lint(text)
        .into_iter()
        .map(|(_, message, line)| {
            let key = message.rsplit(' ').next().unwrap_or_default().to_owned();
            (key, line)
        })
        .collect();
    let expected: Vec<(String, usize)> = [
        ("\"SECRET_PASSPHRASE\")", 3),
        ("\"SUPER_Secret\")", 4),
        ("\"password\")", 5),
        ("\"secret\")", 5),
        ("\"super_duper_secret_token\")", 6),
        ("\"auth\")", 6),
        ("\"apikey\")", 7),
        ("\"git_key\")", 8),
    ]
    .iter()
    .map(|(k, l)| ((*k).to_owned(), *l))
    .collect();
    assert_eq!(found, expected);
    assert_eq!(
        lint("FROM scratch\nARG SECRET_PASSPHRASE\n")[0].1,
        "Do not use ARG or ENV instructions for sensitive data (ARG \"SECRET_PASSPHRASE\")"
    );
}

#[test]
fn invalid_default_arg_in_from() {
    let found = flat(&report_with(
        "ARG VERSION\nFROM busybox:$VERSION\n",
        &[("VERSION", "latest")],
        &[],
    ));
    assert_eq!(
        found,
        one(
            "InvalidDefaultArgInFrom",
            "Default value for ARG busybox:$VERSION results in empty or invalid base image name",
            2
        )
    );
    assert_eq!(
        flat(&report_with(
            "ARG IMAGE\nFROM $IMAGE\n",
            &[("IMAGE", "busybox")],
            &[]
        ))[0]
            .1,
        "Default value for ARG $IMAGE results in empty or invalid base image name"
    );
    assert_eq!(lint("ARG SFX=\"box:\"\nFROM busy${SFX}\n").len(), 1);
    assert!(lint("ARG VERSION=\"latest\"\nFROM busybox:${VERSION}\n").is_empty());
    assert!(lint("ARG VARIANT=\"\"\nFROM busybox:stable${VARIANT}\n").is_empty());
    assert!(lint("ARG VARIANT\nFROM busybox:stable${VARIANT}\n").is_empty());
}

#[test]
fn from_platform_flag_const_disallowed() {
    assert_eq!(
        lint("FROM --platform=linux/amd64 scratch\n"),
        one(
            "FromPlatformFlagConstDisallowed",
            "FROM --platform flag should not use constant value \"linux/amd64\"",
            1
        )
    );
    assert!(lint("FROM --platform=linux/amd64 scratch AS my_amd64_stage\n").is_empty());
    assert!(lint("FROM --platform=linux/amd64 scratch AS linux\n").is_empty());
}

#[test]
fn copy_ignored_file() {
    let text = "FROM scratch\nCOPY Dockerfile .\nADD Dockerfile /windy\n";
    assert_eq!(
        flat(&report_with(text, &[], &["Dockerfile"])),
        vec![
            (
                "CopyIgnoredFile".into(),
                "Attempting to Copy file \"Dockerfile\" that is excluded by .dockerignore".into(),
                2
            ),
            (
                "CopyIgnoredFile".into(),
                "Attempting to Add file \"Dockerfile\" that is excluded by .dockerignore".into(),
                3
            ),
        ]
    );
    let skipped = format!("# check=skip=CopyIgnoredFile\n{text}");
    assert!(
        report_with(&skipped, &[], &["Dockerfile"])
            .violations
            .is_empty()
    );
    let from = "FROM scratch AS base\nCOPY Dockerfile /foobar\nFROM base\nCOPY --from=base /foobar /Dockerfile\n";
    assert!(report_with(from, &[], &["foobar"]).violations.is_empty());
    let negated = "FROM scratch\nCOPY ./Dockerfile .\n";
    assert!(
        report_with(negated, &[], &["**", "!Dockerfile"])
            .violations
            .is_empty()
    );
    let all = "FROM scratch\nCOPY . .\n";
    assert!(report_with(all, &[], &[".*"]).violations.is_empty());
    assert_eq!(
        flat(&report_with(all, &[], &["*"]))[0].1,
        "Attempting to Copy file \".\" that is excluded by .dockerignore"
    );
}

#[test]
fn invalid_definition_description_is_experimental() {
    let text = "# check=experimental=InvalidDefinitionDescription\nFROM scratch\n# bar this is the bar\nARG foo\n# a stage\nFROM scratch AS base\n# base2 the second\nFROM scratch AS base2\n";
    let found = lint(text);
    assert_eq!(
        found,
        vec![
            (
                "InvalidDefinitionDescription".into(),
                "Comment for ARG should follow the format: `# foo <description>`".into(),
                4
            ),
            (
                "InvalidDefinitionDescription".into(),
                "Comment for FROM should follow the format: `# base <description>`".into(),
                6
            ),
        ]
    );
    assert!(lint("FROM scratch\n# bar this is the bar\nARG foo\n").is_empty());
}

#[test]
fn expose_proto_casing_and_invalid_format() {
    assert_eq!(
        lint("FROM scratch\nEXPOSE 80/TcP 8080/TCP 8080/udp\n"),
        vec![
            (
                "ExposeProtoCasing".into(),
                "Defined protocol '80/TcP' in EXPOSE instruction should be lowercase".into(),
                2
            ),
            (
                "ExposeProtoCasing".into(),
                "Defined protocol '8080/TCP' in EXPOSE instruction should be lowercase".into(),
                2
            ),
        ]
    );
    let found = lint("FROM scratch\nEXPOSE 127.0.0.1:80:80 [::1]:8080:8080 5000:5000 8000\n");
    let messages: Vec<&str> = found.iter().map(|(_, m, _)| m.as_str()).collect();
    assert_eq!(
        messages,
        [
            "EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80'",
            "EXPOSE instruction should not define an IP address or host-port mapping, found '[::1]:8080:8080'",
            "EXPOSE instruction should not define an IP address or host-port mapping, found '5000:5000'",
        ]
    );
}

#[test]
fn check_option_skip_and_error() {
    let body = "FROM scratch as base\ncopy Dockerfile .\n";
    let report = report_with(&format!("#check=skip=all\n{body}"), &[], &[]);
    assert!(report.violations.is_empty() && report.failure().is_none());
    let report = report_with(&format!("#check=skip=all;error=true\n{body}"), &[], &[]);
    assert!(report.failure().is_none());
    let skip_two = "#check=skip=ConsistentInstructionCasing,FromAsCasing;error=true\n";
    assert!(
        report_with(&format!("{skip_two}{body}"), &[], &[])
            .failure()
            .is_none()
    );
    let report = report_with(
        &format!("#check=skip=ConsistentInstructionCasing;error=true\n{body}"),
        &[],
        &[],
    );
    assert_eq!(
        flat(&report),
        one(
            "FromAsCasing",
            "'as' and 'FROM' keywords' casing do not match",
            2
        )
    );
    assert_eq!(
        report.failure().map(|e| e.to_string()).as_deref(),
        Some("lint violation found for rules: FromAsCasing")
    );
}

#[test]
fn build_arg_replaces_the_directive() {
    let text = "#check=skip=all\nFROM scratch as base\ncopy Dockerfile .\n";
    let arg = [(
        CHECK_BUILD_ARG,
        "skip=ConsistentInstructionCasing;error=true",
    )];
    let report = report_with(text, &arg, &[]);
    assert_eq!(
        report.failure().map(|e| e.to_string()).as_deref(),
        Some("lint violation found for rules: FromAsCasing")
    );
    let text = "#check=error=true\nFROM scratch as base\ncopy Dockerfile .\n";
    let report = report_with(text, &[(CHECK_BUILD_ARG, "skip=all")], &[]);
    assert!(report.violations.is_empty() && report.failure().is_none());
}

#[test]
fn invalid_options_are_an_error() {
    let df = parser::parse("# check=skip\nFROM scratch\n").unwrap();
    let args = BTreeMap::new();
    assert!(matches!(
        run(&df, &CheckOptions::new(&args)),
        Err(CheckError::Options { .. })
    ));
}

#[test]
fn violation_short_form_and_urls() {
    let report = report_with("FROM scratch as base\n", &[], &[]);
    let v = &report.violations[0];
    assert_eq!(
        v.short(),
        "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"
    );
    assert_eq!(
        v.url,
        "https://docs.docker.com/go/dockerfile/rule/from-as-casing/"
    );
    for rule in rules::ALL {
        let kebab = rule.url.trim_end_matches('/').rsplit('/').next().unwrap();
        assert_eq!(
            kebab.replace('-', ""),
            rule.name.to_lowercase(),
            "{}",
            rule.name
        );
    }
}

#[test]
fn heredoc_bodies_and_run_mounts() {
    let text = "FROM scratch\nENTRYPOINT [\"/a\"]\nCOPY <<EOF /a.txt\n$notavar\nEOF\nENTRYPOINT [\"/b\"]\n";
    let found = lint(text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "MultipleInstructionsDisallowed");
    assert_eq!(
        lint("FROM scratch\nRUN --mount=type=cache,target=$CACHE true\n"),
        one("UndefinedVar", "Usage of undefined variable '$CACHE'", 2)
    );
    let add = "FROM scratch\nADD https://example.com/Dockerfile /x\n";
    assert!(report_with(add, &[], &["Dockerfile"]).violations.is_empty());
}
