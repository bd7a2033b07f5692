use super::*;
use crate::parser;

fn parse_text(text: &str) -> Result<Instructions, InstructionError> {
    parse(&parser::parse(text).unwrap())
}

fn kind(text: &str) -> InstructionErrorKind {
    parse_text(text).unwrap_err().kind
}

fn commands(text: &str) -> Vec<CommandKind> {
    let mut i = parse_text(text).unwrap();
    i.stages
        .pop()
        .unwrap()
        .commands
        .into_iter()
        .map(|c| c.kind)
        .collect()
}

#[test]
fn stages_and_meta_args() {
    let i = parse_text("ARG V=1\nARG B\nFROM a:$V AS Build\nRUN x\nFROM build\n").unwrap();
    assert_eq!(i.meta_args.len(), 2);
    assert_eq!(
        i.meta_args[0].0,
        ArgDecl {
            name: "V".into(),
            default: Some("1".into())
        }
    );
    assert_eq!(i.stages[0].name.as_deref(), Some("build"));
    assert_eq!(i.stages[0].base, "a:$V");
    assert_eq!(i.stages[1].index, 1);
    assert_eq!(i.stages[0].commands.len(), 1);
}

#[test]
fn every_instruction() {
    let cmds = commands(concat!(
        "FROM a\n",
        "RUN --mount=type=cache,target=/c --network=none --security=insecure make\n",
        "CMD [\"a\"]\nENTRYPOINT b c\nLABEL a=b\nMAINTAINER me\nEXPOSE 80 443/udp\n",
        "ENV a=1 b=2\nADD --checksum=sha256:00 --keep-git-dir --unpack=false http://x/y /z\n",
        "COPY --from=b --chown=1:2 --chmod=644 --link --parents --exclude=*.md a b /d/\n",
        "VOLUME /v\nUSER u\nWORKDIR /w\nARG x y=2\nONBUILD RUN echo\nSTOPSIGNAL SIGINT\n",
        "HEALTHCHECK --interval=5s --retries=2 CMD true\nSHELL [\"/bin/bash\", \"-c\"]\n",
    ));
    assert_eq!(cmds.len(), 17);
    let CommandKind::Run(run) = &cmds[0] else {
        panic!()
    };
    assert_eq!(run.network.as_deref(), Some("none"));
    assert_eq!(run.mounts[0].get("type"), Some(Some("cache")));
    assert!(run.command.prepend_shell);
    let CommandKind::Cmd(cmd) = &cmds[1] else {
        panic!()
    };
    assert!(!cmd.prepend_shell);
    let CommandKind::Add(add) = &cmds[7] else {
        panic!()
    };
    assert_eq!(add.add.as_ref().unwrap().unpack, Some(false));
    assert!(add.add.as_ref().unwrap().keep_git_dir);
    let CommandKind::Copy(copy) = &cmds[8] else {
        panic!()
    };
    assert_eq!(copy.sources, ["a", "b"]);
    assert_eq!(copy.dest, "/d/");
    assert_eq!(copy.from.as_deref(), Some("b"));
    assert!(copy.link && copy.parents);
    assert_eq!(copy.excludes, ["*.md"]);
    let CommandKind::Arg(args) = &cmds[12] else {
        panic!()
    };
    assert_eq!(args.len(), 2);
    assert_eq!(cmds[13], CommandKind::Onbuild("RUN echo".into()));
    let CommandKind::Healthcheck(h) = &cmds[15] else {
        panic!()
    };
    assert_eq!(h.test, ["CMD-SHELL", "true"]);
    assert_eq!((h.interval, h.retries), (5_000_000_000, 2));
}

#[test]
fn heredoc_sources() {
    let cmds = commands("FROM a\nCOPY <<EOF <<-\"X\" f /d/\nhello $x\nEOF\n\tbody\n\tX\n");
    let CommandKind::Copy(copy) = &cmds[0] else {
        panic!()
    };
    assert_eq!(copy.sources, ["f"]);
    assert_eq!(copy.heredocs[0].data, "hello $x\n");
    assert!(copy.heredocs[0].expand);
    assert_eq!(copy.heredocs[1].data, "body\n");
    assert!(!copy.heredocs[1].expand);
}

#[test]
fn errors() {
    use InstructionErrorKind as K;
    let e = parse_text("FROM a\n\nFRUM b\n").unwrap_err();
    assert_eq!(e.line, 3);
    assert_eq!(
        e.to_string(),
        "dockerfile parse error on line 3: unknown instruction: FRUM (did you mean FROM?)"
    );
    assert_eq!(kind("RUN x\n"), K::BeforeFrom("RUN".into()));
    assert_eq!(
        kind("FROM a\nCOPY --nope a b\n"),
        K::UnknownFlag("nope".into())
    );
    assert_eq!(
        kind("FROM a\nADD --from=x a b\n"),
        K::UnknownFlag("from".into())
    );
    assert_eq!(kind("FROM a\nCOPY a\n"), K::NoDestination("COPY"));
    assert_eq!(
        kind("FROM a\nCOPY a <<EOF\nx\nEOF\n"),
        K::HeredocDestination("COPY")
    );
    assert_eq!(kind("FROM a b\n"), K::FromArguments);
    assert_eq!(kind("FROM a AS 1x\n"), K::InvalidStageName("1x".into()));
    assert_eq!(kind("FROM a\nRUN\n"), K::AtLeastOneArgument("RUN"));
    assert_eq!(kind("FROM a\nUSER\n"), K::ExactlyOneArgument("USER"));
    assert_eq!(kind("FROM a\nWORKDIR\n"), K::ExactlyOneArgument("WORKDIR"));
    assert_eq!(kind("FROM a\nENV\n"), K::AtLeastOneArgument("ENV"));
    assert_eq!(kind("FROM a\nLABEL =x\n"), K::BlankName("LABEL"));
    assert_eq!(kind("FROM a\nARG =x\n"), K::BlankName("ARG"));
    assert_eq!(kind("FROM a\nEXPOSE\n"), K::AtLeastOneArgument("EXPOSE"));
    assert_eq!(kind("FROM a\nVOLUME [\"\"]\n"), K::EmptyVolume);
    assert_eq!(kind("FROM a\nSHELL /bin/sh\n"), K::ShellNotJson);
    assert_eq!(kind("FROM a\nONBUILD ONBUILD RUN x\n"), K::OnbuildChain);
    assert_eq!(
        kind("FROM a\nONBUILD FROM x\n"),
        K::OnbuildTrigger("FROM".into())
    );
    assert_eq!(kind("FROM a\nHEALTHCHECK NONE x\n"), K::HealthcheckNoneArgs);
    assert_eq!(
        kind("FROM a\nHEALTHCHECK CMD\n"),
        K::HealthcheckMissingCommand
    );
    assert_eq!(
        kind("FROM a\nHEALTHCHECK EXEC x\n"),
        K::HealthcheckType("EXEC".into())
    );
    assert!(matches!(
        kind("FROM a\nHEALTHCHECK --interval=1us CMD x\n"),
        K::Duration {
            flag: "interval",
            ..
        }
    ));
    assert!(matches!(
        kind("FROM a\nHEALTHCHECK --timeout=5 CMD x\n"),
        K::Duration {
            flag: "timeout",
            ..
        }
    ));
    assert_eq!(
        kind("FROM a\nHEALTHCHECK --retries=-1 CMD x\n"),
        K::Retries("-1".into())
    );
    assert!(
        parse_text("FROM a\nHEALTHCHECK --interval=0s --retries=0 CMD x\n").is_ok(),
        "0 means the default"
    );
    assert_eq!(
        kind("FROM a\nRUN --network=bridge x\n"),
        K::Network("bridge".into())
    );
    assert_eq!(
        kind("FROM a\nRUN --security=root x\n"),
        K::Security("root".into())
    );
    assert!(matches!(
        kind("FROM a\nRUN --mount=type=bind,foo=1 x\n"),
        K::Mount { .. }
    ));
    assert_eq!(
        kind("FROM a\nCOPY --link=maybe a b\n"),
        K::FlagNotBool("link".into(), "maybe".into())
    );
    assert_eq!(
        kind("FROM a\nCOPY --from a b\n"),
        K::FlagMissingValue("from".into())
    );
    assert_eq!(
        kind("FROM a\nCOPY --from=x --from=y a b\n"),
        K::DuplicateFlag("from".into())
    );
    assert_eq!(kind("FROM a\nCMD --x y\n"), K::UnknownFlag("x".into()));
    assert_eq!(
        kind("FROM --platform a AS b\n"),
        K::FlagMissingValue("platform".into())
    );
}

#[test]
fn syntax_names_a_dockerfile_frontend_or_fails_on_its_line() {
    for known in [
        "# syntax=docker/dockerfile:1\nFROM a\n",
        "# syntax = docker/dockerfile\nFROM a\n",
        "#syntax=docker.io/docker/dockerfile:1.7-labs\nFROM a\n",
        "# check=skip=all\n# syntax=docker/dockerfile-upstream:master\nFROM a\n",
        "# syntax=docker/dockerfile:1@sha256:ac85f380a63b13dfcefa89046420e1781752bab202122f8f50032edf31be0021 --flag\nFROM a\n",
    ] {
        assert!(parse_text(known).is_ok(), "{known}");
    }
    let e = parse_text("# escape=`\n# syntax=foobar\nFROM a\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(e.kind, InstructionErrorKind::Frontend("foobar".into()));
    assert!(
        e.to_string()
            .starts_with("dockerfile parse error on line 2: unsupported frontend \"foobar\"")
    );
    assert_eq!(
        kind("# syntax=example.com/docker/dockerfile:1\nFROM a\n"),
        InstructionErrorKind::Frontend("example.com/docker/dockerfile:1".into())
    );
}
