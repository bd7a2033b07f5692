//! The rules, with BuildKit's names, descriptions and URLs
//! (`frontend/dockerfile/linter/ruleset.go`). Their messages are written
//! where each fires.

/// One build check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// BuildKit's name (`FromAsCasing`): what `# check=skip=` names.
    pub name: &'static str,
    pub description: &'static str,
    /// `https://docs.docker.com/go/dockerfile/rule/<kebab-name>/`.
    pub url: &'static str,
    /// Runs only when asked for (`# check=experimental=NAME` or `all`).
    pub experimental: bool,
}

macro_rules! rules {
    ($($konst:ident $name:literal $kebab:literal $description:literal $experimental:literal;)*) => {
        $(
            pub const $konst: Rule = Rule {
                name: $name,
                description: $description,
                url: concat!("https://docs.docker.com/go/dockerfile/rule/", $kebab, "/"),
                experimental: $experimental,
            };
        )*
        /// Every rule kiln checks.
        pub const ALL: &[Rule] = &[$($konst),*];
    };
}

rules! {
    STAGE_NAME_CASING "StageNameCasing" "stage-name-casing"
        "Stage names should be lowercase" false;
    FROM_AS_CASING "FromAsCasing" "from-as-casing"
        "The 'as' keyword should match the case of the 'from' keyword" false;
    NO_EMPTY_CONTINUATION "NoEmptyContinuation" "no-empty-continuation"
        "Empty continuation lines will become errors in a future release" false;
    CONSISTENT_INSTRUCTION_CASING "ConsistentInstructionCasing" "consistent-instruction-casing"
        "All commands within the Dockerfile should use the same casing (either upper or lower)" false;
    DUPLICATE_STAGE_NAME "DuplicateStageName" "duplicate-stage-name"
        "Stage names should be unique" false;
    RESERVED_STAGE_NAME "ReservedStageName" "reserved-stage-name"
        "Reserved words should not be used as stage names" false;
    JSON_ARGS_RECOMMENDED "JSONArgsRecommended" "json-args-recommended"
        "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals" false;
    MAINTAINER_DEPRECATED "MaintainerDeprecated" "maintainer-deprecated"
        "The MAINTAINER instruction is deprecated, use a label instead to define an image author" false;
    UNDEFINED_ARG_IN_FROM "UndefinedArgInFrom" "undefined-arg-in-from"
        "FROM command must use declared ARGs" false;
    WORKDIR_RELATIVE_PATH "WorkdirRelativePath" "workdir-relative-path"
        "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes" false;
    UNDEFINED_VAR "UndefinedVar" "undefined-var"
        "Variables should be defined before their use" false;
    MULTIPLE_INSTRUCTIONS_DISALLOWED "MultipleInstructionsDisallowed" "multiple-instructions-disallowed"
        "Multiple instructions of the same type should not be used in the same stage" false;
    LEGACY_KEY_VALUE_FORMAT "LegacyKeyValueFormat" "legacy-key-value-format"
        "Legacy key/value format with whitespace separator should not be used" false;
    REDUNDANT_TARGET_PLATFORM "RedundantTargetPlatform" "redundant-target-platform"
        "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior" false;
    SECRETS_USED_IN_ARG_OR_ENV "SecretsUsedInArgOrEnv" "secrets-used-in-arg-or-env"
        "Sensitive data should not be used in the ARG or ENV commands" false;
    INVALID_DEFAULT_ARG_IN_FROM "InvalidDefaultArgInFrom" "invalid-default-arg-in-from"
        "Default value for global ARG results in an empty or invalid base image name" false;
    FROM_PLATFORM_FLAG_CONST_DISALLOWED "FromPlatformFlagConstDisallowed" "from-platform-flag-const-disallowed"
        "FROM --platform flag should not use a constant value" false;
    COPY_IGNORED_FILE "CopyIgnoredFile" "copy-ignored-file"
        "Attempting to Copy file that is excluded by .dockerignore" false;
    INVALID_DEFINITION_DESCRIPTION "InvalidDefinitionDescription" "invalid-definition-description"
        "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment." true;
    EXPOSE_PROTO_CASING "ExposeProtoCasing" "expose-proto-casing"
        "Protocol in EXPOSE instruction should be lowercase" false;
    EXPOSE_INVALID_FORMAT "ExposeInvalidFormat" "expose-invalid-format"
        "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release" false;
}
