use std::collections::BTreeMap;

use kiln_proto::ops::v1::{
    CacheSharing, ExecOp, FileCopy, MountType, NetworkMode, Op, file_action, op, owner, source_op,
};

use super::*;

fn options() -> ConvertOptions<'static> {
    ConvertOptions {
        build_platform: platform::parse("linux/amd64").unwrap(),
        target_platform: platform::parse("linux/arm64").unwrap(),
        ..ConvertOptions::new(&NoImages)
    }
}

fn build(text: &str) -> BuildGraph {
    build_with(text, &options())
}

fn build_with(text: &str, options: &ConvertOptions<'_>) -> BuildGraph {
    convert_dockerfile(text, options).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    match convert_dockerfile(text, &options()) {
        Ok(_) => panic!("converted without an error"),
        Err(e) => e.to_string(),
    }
}

fn with_args(args: &[(&str, &str)]) -> ConvertOptions<'static> {
    let build_args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ConvertOptions {
        build_args,
        ..options()
    }
}

fn vertex<'a>(g: &'a BuildGraph, digest: &str) -> &'a Op {
    &g.vertices
        .iter()
        .find(|v| v.digest == digest)
        .expect("vertex in graph")
        .op
}

fn root(g: &BuildGraph) -> &Op {
    vertex(g, g.target_stage().root.as_deref().expect("a root"))
}

fn exec(op: &Op) -> &ExecOp {
    match &op.kind {
        Some(op::Kind::Exec(e)) => e,
        other => panic!("not an exec: {other:?}"),
    }
}

fn copies(op: &Op) -> Vec<&FileCopy> {
    let Some(op::Kind::File(f)) = &op.kind else {
        panic!("not a file op: {op:?}")
    };
    f.actions
        .iter()
        .filter_map(|a| match &a.action {
            Some(file_action::Action::Copy(c)) => Some(c),
            _ => None,
        })
        .collect()
}

fn config(g: &BuildGraph) -> &ImageConfig {
    &g.target_stage().image.config
}

#[test]
fn config_instructions() {
    let g = build(concat!(
        "FROM scratch\n",
        "ENV A=1 B=\"two words\"\nENV C=$A-${B}\n",
        "LABEL \"com.example.x\"=\"y z\" v=$A\n",
        "EXPOSE 80 53/udp 8000-8001\n",
        "USER app:app\nVOLUME /data [\"/logs\"]\nSTOPSIGNAL SIGINT\n",
        "SHELL [\"/bin/bash\", \"-c\"]\nCMD echo $HOME\n",
        "HEALTHCHECK --interval=30s --retries=3 CMD [\"/check\"]\n",
        "ONBUILD RUN make\nMAINTAINER Jane\n",
    ));
    let c = config(&g);
    assert_eq!(
        c.env.as_deref().unwrap(),
        [
            format!("PATH={}", state::DEFAULT_PATH),
            "A=1".into(),
            "B=two words".into(),
            "C=1-two words".into()
        ]
    );
    let labels = c.labels.as_ref().unwrap();
    assert_eq!(labels["com.example.x"], "y z");
    assert_eq!(labels["v"], "1");
    let ports: Vec<_> = c.exposed_ports.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
    assert_eq!(c.user.as_deref(), Some("app:app"));
    assert_eq!(c.volumes.as_ref().unwrap().len(), 2);
    assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(c.cmd.as_deref().unwrap(), ["/bin/bash", "-c", "echo $HOME"]);
    let h = c.healthcheck.as_ref().unwrap();
    assert_eq!(
        (h.test.clone(), h.interval, h.retries),
        (vec!["CMD".into(), "/check".into()], 30_000_000_000, 3)
    );
    assert_eq!(c.on_build.as_deref().unwrap(), ["RUN make"]);
    assert_eq!(g.target_stage().image.author.as_deref(), Some("Jane"));
    assert!(
        g.target_stage().root.is_none(),
        "no instruction touched the filesystem"
    );
    assert_eq!(g.target_stage().image.platform.architecture, "arm64");
    let history = &g.target_stage().image.history;
    assert_eq!(history.len(), 11, "ONBUILD records no history, as BuildKit");
    assert!(history.iter().all(|h| h.empty_layer));
    assert!(!history.iter().any(|h| h.created_by.starts_with("ONBUILD")));
}

#[test]
fn env_pairs_see_the_environment_before_the_instruction() {
    let g = build("FROM scratch\nENV abc=hello\nENV abc=bye def=$abc\n");
    assert_eq!(config(&g).env_var("def"), Some("hello"));
    assert_eq!(config(&g).env_var("abc"), Some("bye"));
}

#[test]
fn entrypoint_drops_inherited_cmd_only() {
    let g = build("FROM scratch AS base\nCMD [\"a\"]\nFROM base\nENTRYPOINT [\"e\"]\n");
    assert_eq!(config(&g).cmd, None);
    assert_eq!(config(&g).entrypoint.as_deref().unwrap(), ["e"]);
    let g = build("FROM scratch\nCMD [\"a\"]\nENTRYPOINT e\n");
    assert_eq!(config(&g).cmd.as_deref().unwrap(), ["a"]);
    assert_eq!(
        config(&g).entrypoint.as_deref().unwrap(),
        ["/bin/sh", "-c", "e"]
    );
}

#[test]
fn scratch_starts_in_the_root_directory() {
    let g = build("FROM scratch\nCOPY a /\n");
    assert_eq!(config(&g).working_dir.as_deref(), Some("/"));
    let g = build("FROM busybox\nCOPY a /\n");
    assert_eq!(
        config(&g).working_dir,
        None,
        "none from an image without one"
    );
    let g = build("FROM scratch AS s\nFROM s\nWORKDIR rel\n");
    assert_eq!(config(&g).working_dir.as_deref(), Some("/rel"));
}

#[test]
fn workdir_is_relative_and_created_as_the_user() {
    let g = build("FROM busybox\nUSER 1000\nWORKDIR /app\nWORKDIR src/../lib\n");
    assert_eq!(config(&g).working_dir.as_deref(), Some("/app/lib"));
    let Some(op::Kind::File(f)) = &root(&g).kind else {
        panic!()
    };
    let Some(file_action::Action::Mkdir(mkdir)) = &f.actions[0].action else {
        panic!()
    };
    assert_eq!(mkdir.path, "/app/lib");
    assert!(mkdir.make_parents);
    assert_eq!(
        mkdir.owner.as_ref().unwrap().user,
        Some(owner::User::Uid(1000))
    );
    assert_eq!(
        g.target_stage().image.history[2].created_by,
        "WORKDIR /app/lib"
    );
    assert!(!g.target_stage().image.history[2].empty_layer);
}

#[test]
fn run_exec_op() {
    let g = build_with(
        concat!(
            "FROM busybox\nARG V=1\nARG SHADOWED=arg\nENV SHADOWED=env\nWORKDIR /w\nUSER nobody\n",
            "RUN --network=none echo $V\n",
        ),
        &with_args(&[("HTTP_PROXY", "http://proxy:3128")]),
    );
    let e = exec(root(&g));
    let meta = e.meta.as_ref().unwrap();
    assert_eq!(meta.args, ["/bin/sh", "-c", "echo $V"]);
    assert_eq!(meta.cwd, "/w");
    assert_eq!(meta.user, "nobody");
    assert!(meta.env.contains(&"V=1".to_owned()));
    assert!(meta.env.contains(&"SHADOWED=env".to_owned()));
    assert!(
        !meta.env.contains(&"SHADOWED=arg".to_owned()),
        "ENV wins over ARG"
    );
    assert_eq!(e.network, NetworkMode::None as i32);
    assert_eq!(
        e.proxy_env,
        [
            "HTTP_PROXY=http://proxy:3128",
            "http_proxy=http://proxy:3128"
        ]
    );
    assert_eq!(root(&g).platform.as_ref().unwrap().architecture, "arm64");
    assert_eq!(
        config(&g).env_var("V"),
        None,
        "ARG values are not persisted"
    );

    // Proxies never enter the digest.
    let plain = build(
        "FROM busybox\nARG V=1\nARG SHADOWED=arg\nENV SHADOWED=env\nWORKDIR /w\nUSER nobody\nRUN --network=none echo $V\n",
    );
    assert_eq!(g.target_stage().root, plain.target_stage().root);
    // Build arg values do.
    let other = build_with(
        "FROM busybox\nARG V=1\nARG SHADOWED=arg\nENV SHADOWED=env\nWORKDIR /w\nUSER nobody\nRUN --network=none echo $V\n",
        &with_args(&[("V", "2")]),
    );
    assert_ne!(other.target_stage().root, plain.target_stage().root);
}

#[test]
fn run_mounts() {
    let g = build(concat!(
        "FROM busybox AS tools\nFROM busybox\nWORKDIR /src\nARG CACHE=/root/.cache\n",
        "RUN --mount=type=cache,target=$CACHE,sharing=locked,mode=0700,uid=1 ",
        "--mount=type=bind,from=tools,source=/bin,target=/tools ",
        "--mount=type=bind,target=ctx,rw ",
        "--mount=type=tmpfs,target=/tmp,size=64m ",
        "--mount=type=secret,id=token ",
        "--mount=type=secret,id=aws,env=AWS_KEY,required ",
        "--mount=type=ssh make\n",
    ));
    let e = exec(root(&g));
    let m = &e.mounts;
    assert_eq!(m.len(), 7);
    assert_eq!(m[0].r#type, MountType::Cache as i32);
    assert_eq!(m[0].target, "/root/.cache");
    let cache = m[0].cache.as_ref().unwrap();
    assert_eq!(
        (cache.id.as_str(), cache.sharing, cache.mode, cache.uid),
        ("/root/.cache", CacheSharing::Locked as i32, 0o700, 1)
    );
    assert_eq!(
        (m[1].target.as_str(), m[1].source.as_str(), m[1].readonly),
        ("/tools", "/bin", true)
    );
    let tools = g
        .stages
        .iter()
        .find(|s| s.name.as_deref() == Some("tools"))
        .unwrap();
    assert_eq!(
        root(&g).inputs[m[1].input as usize],
        tools.root.clone().unwrap()
    );
    assert_eq!((m[2].target.as_str(), m[2].readonly), ("/src/ctx", false));
    let context = vertex(&g, &root(&g).inputs[m[2].input as usize]);
    assert!(
        matches!(&context.kind, Some(op::Kind::Source(s)) if matches!(s.source, Some(source_op::Source::Local(_))))
    );
    assert_eq!(m[3].tmpfs.as_ref().unwrap().size, 64 << 20);
    assert_eq!(m[4].target, "/run/secrets/token");
    assert_eq!(m[4].secret.as_ref().unwrap().mode, 0o400);
    let aws = m[5].secret.as_ref().unwrap();
    assert_eq!(
        (m[5].target.as_str(), aws.env.as_str(), aws.required),
        ("", "AWS_KEY", true)
    );
    assert_eq!(m[6].ssh.as_ref().unwrap().id, "default");
}

#[test]
fn run_heredocs() {
    let g = build("FROM busybox\nRUN <<EOF\necho a\necho b\nEOF\n");
    assert_eq!(
        exec(root(&g)).meta.as_ref().unwrap().args,
        ["/bin/sh", "-c", "echo a\necho b\n"]
    );
    let g = build("FROM busybox\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n");
    let e = exec(root(&g));
    assert_eq!(
        e.meta.as_ref().unwrap().args,
        ["/bin/sh", "-c", "/dev/pipes/EOF"]
    );
    assert_eq!(e.mounts[0].target, "/dev/pipes");
    let g = build("FROM busybox\nRUN cat <<A > /a && cat <<B > /b\n1\nA\n2\nB\n");
    assert_eq!(
        exec(root(&g)).meta.as_ref().unwrap().args[2],
        "cat <<A > /a && cat <<B > /b\n1\nA\n2\nB"
    );
}

#[test]
fn arg_scoping() {
    let text = concat!(
        "ARG BASE=busybox\nARG TAG\nFROM ${BASE}:${TAG:-1.36} AS one\n",
        "RUN echo $BASE\n",
        "FROM busybox\nARG BASE\nARG TARGETARCH\nARG BUILDPLATFORM\nRUN echo $BASE $TARGETARCH $BUILDPLATFORM\n",
    );
    let g = build_with(
        text,
        &ConvertOptions {
            target: Some("one".into()),
            ..options()
        },
    );
    let from = vertex(
        &g,
        &exec(root(&g))
            .meta
            .as_ref()
            .map(|_| root(&g).inputs[0].clone())
            .unwrap(),
    )
    .clone();
    let Some(op::Kind::Source(s)) = &from.kind else {
        panic!()
    };
    assert!(
        matches!(&s.source, Some(source_op::Source::Image(i)) if i.reference == "docker.io/library/busybox:1.36")
    );
    assert!(
        !exec(root(&g))
            .meta
            .as_ref()
            .unwrap()
            .env
            .iter()
            .any(|e| e.starts_with("BASE=")),
        "not redeclared"
    );

    let g = build_with(text, &with_args(&[("BASE", "alpine")]));
    let env = &exec(root(&g)).meta.as_ref().unwrap().env;
    assert!(env.contains(&"BASE=alpine".to_owned()));
    assert!(env.contains(&"TARGETARCH=arm64".to_owned()));
    assert!(env.contains(&"BUILDPLATFORM=linux/amd64".to_owned()));
    assert!(g.warnings.is_empty());

    let g = build_with(
        "FROM busybox\n",
        &with_args(&[("NOPE", "1"), ("HTTP_PROXY", "x")]),
    );
    assert_eq!(g.warnings.len(), 1);
    assert!(g.warnings[0].message.contains("[NOPE]"));
}

#[test]
fn from_platform_and_target_stage_only() {
    let text = concat!(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nRUN make\n",
        "FROM busybox AS unused\nRUN exit 1\n",
        "FROM scratch\nCOPY --from=build /out /\n",
    );
    let g = build(text);
    assert_eq!(g.stages.iter().map(|s| s.index).collect::<Vec<_>>(), [0, 2]);
    assert!(
        !g.vertices
            .iter()
            .any(|v| v.meta.description.contains("exit 1"))
    );
    let build_stage = &g.stages[0];
    assert_eq!(platform::format(&build_stage.image.platform), "linux/amd64");
    assert_eq!(
        platform::format(&g.target_stage().image.platform),
        "linux/arm64"
    );
    let g = build_with(
        text,
        &ConvertOptions {
            target: Some("UNUSED".into()),
            ..options()
        },
    );
    assert_eq!(g.stages.len(), 1);
    assert_eq!(g.target_stage().name.as_deref(), Some("unused"));
}

#[test]
fn a_build_platform_stage_is_the_same_ops_for_every_target() {
    let text = concat!(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nRUN make\n",
        "ARG TARGETARCH\nRUN echo $TARGETARCH > /arch\n",
        "FROM busybox\nCOPY --from=build /out /\nRUN uname -m\n",
    );
    let for_target = |target: &str| {
        build_with(
            text,
            &ConvertOptions {
                target_platform: platform::parse(target).unwrap(),
                name_platforms: true,
                ..options()
            },
        )
    };
    let (amd64, arm64) = (for_target("linux/amd64"), for_target("linux/arm64"));
    let described = |g: &BuildGraph, what: &str| {
        let v = g
            .vertices
            .iter()
            .find(|v| v.meta.description.ends_with(what))
            .unwrap_or_else(|| panic!("no {what}"));
        (v.digest.clone(), v.meta.description.clone())
    };
    // The build platform's `RUN make` is one op, named for where it runs
    // (an `ARG TARGETARCH` before it would make it one per target).
    assert_eq!(described(&amd64, "RUN make"), described(&arm64, "RUN make"));
    assert_eq!(
        described(&arm64, "RUN make").1,
        "[linux/amd64 build 2/4] RUN make"
    );
    // What reads TARGETARCH, and every step of the target stage, differ.
    let arch = "RUN echo $TARGETARCH > /arch";
    assert_ne!(described(&amd64, arch).0, described(&arm64, arch).0);
    let uname = described(&arm64, "RUN uname -m");
    assert_eq!(uname.1, "[linux/arm64 stage-1 3/3] RUN uname -m");
    let from = "[linux/arm64 stage-1 1/3] FROM docker.io/library/busybox:latest";
    assert!(arm64.vertices.iter().any(|v| v.meta.description == from));
    assert_ne!(uname.0, described(&amd64, "RUN uname -m").0);

    // Merged, what both share is there once, and every vertex follows its
    // inputs.
    let both = merged(&[amd64.clone(), arm64.clone()]);
    let make = both
        .vertices
        .iter()
        .filter(|v| v.meta.description.ends_with("RUN make"));
    assert_eq!(make.count(), 1);
    let mut all: Vec<&str> = amd64
        .vertices
        .iter()
        .chain(&arm64.vertices)
        .map(|v| v.digest.as_str())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(both.vertices.len(), all.len());
    for (i, v) in both.vertices.iter().enumerate() {
        for input in &v.op.inputs {
            assert!(
                both.vertices[..i].iter().any(|u| &u.digest == input),
                "{input} after its user"
            );
        }
    }
}

#[test]
fn digests_are_content_addressed() {
    let a = build(
        "FROM busybox AS a\nRUN echo a\nFROM busybox AS b\nRUN echo b\nFROM scratch\nCOPY --from=a / /a\nCOPY --from=b / /b\n",
    );
    let b = build(
        "FROM busybox AS a\nRUN echo a\nFROM busybox AS b\nRUN echo CHANGED\nFROM scratch\nCOPY --from=a / /a\nCOPY --from=b / /b\n",
    );
    let stage_root = |g: &BuildGraph, name: &str| {
        g.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap()
            .root
            .clone()
    };
    assert_eq!(
        stage_root(&a, "a"),
        stage_root(&b, "a"),
        "an unrelated stage keeps its digest"
    );
    assert_ne!(stage_root(&a, "b"), stage_root(&b, "b"));
    assert_ne!(a.target_stage().root, b.target_stage().root);

    // Identical subgraphs are one vertex.
    let g = build(
        "FROM busybox AS x\nRUN make\nFROM busybox AS y\nRUN make\nFROM scratch\nCOPY --from=x / /\nCOPY --from=y / /\n",
    );
    assert_eq!(stage_root(&g, "x"), stage_root(&g, "y"));
    let mut digests: Vec<_> = g.vertices.iter().map(|v| v.digest.clone()).collect();
    digests.dedup();
    assert_eq!(digests.len(), g.vertices.len());
    // Every input comes before its user.
    for (i, v) in g.vertices.iter().enumerate() {
        for input in &v.op.inputs {
            assert!(g.vertices[..i].iter().any(|u| &u.digest == input));
        }
    }
    // The same text always gives the same graph.
    assert_eq!(
        build("FROM busybox\nRUN make\n"),
        build("FROM busybox\nRUN make\n")
    );
}

#[test]
fn copy_rules() {
    let g = build(
        "FROM busybox\nWORKDIR /app\nCOPY --chown=app:1 --chmod=0640 --exclude=*.md a b ./\n",
    );
    let c = copies(root(&g));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].sources, ["/a", "/b"]);
    assert_eq!(c[0].dest, "/app/");
    assert_eq!(c[0].mode, Some(0o640));
    assert_eq!(c[0].exclude_patterns, ["*.md"]);
    let o = c[0].owner.as_ref().unwrap();
    assert_eq!(
        (o.user.clone(), o.group.clone()),
        (
            Some(owner::User::UserName("app".into())),
            Some(owner::Group::Gid(1))
        )
    );
    assert!(c[0].allow_wildcard && !c[0].unpack_archives);

    let g = build(
        "FROM busybox AS s\nFROM busybox\nCOPY --from=0 /x/../y /z\nCOPY --from=alpine:3 /etc/os-release /\n",
    );
    let c = copies(root(&g));
    assert_eq!(c[0].sources, ["/etc/os-release"]);
    assert!(g.vertices.iter().any(|v| {
        v.meta
            .description
            .contains("FROM docker.io/library/alpine:3")
    }));

    let text = "FROM busybox AS s\nRUN x\nFROM busybox AS main\nARG SRC=s\nCOPY --from=$SRC / /\nFROM busybox AS unused\n";
    let g = build_with(
        text,
        &ConvertOptions {
            target: Some("main".into()),
            ..options()
        },
    );
    assert_eq!(
        g.stages.len(),
        2,
        "--from expands with the stage's ARGs; only stages needed convert"
    );
}

#[test]
fn from_names_an_earlier_stage_and_expands_no_env() {
    assert_eq!(
        error("FROM busybox AS main\nCOPY --from=s / /\nFROM busybox AS s\nFROM main\n"),
        "line 2: COPY --from=s / /: cannot copy from stage \"s\", it needs to be defined before current stage \"main\""
    );
    assert_eq!(
        error("FROM busybox AS a\nRUN --mount=from=1,target=/m x\nFROM busybox\nFROM a\n"),
        "line 2: RUN --mount=from=1,target=/m x: cannot mount from stage \"1\" to \"/m\", stage needs to be defined before current command"
    );
    assert_eq!(
        error("FROM busybox AS s\nFROM busybox\nENV S=s\nCOPY --from=${S} / /\n"),
        "line 4: COPY --from=${S} / /: ${S}: S is an ENV variable; --from and from= expand only build arguments (ARG)"
    );
    assert!(
        error(
            "FROM busybox AS s\nFROM busybox\nARG S=s\nENV S=s\nRUN --mount=from=$S,target=/m x\n"
        )
        .contains("S is an ENV variable"),
        "an ENV overrides the ARG of its name"
    );
    let g = build("FROM busybox AS s\nFROM busybox\nARG S=s\nRUN --mount=from=$S,target=/m x\n");
    assert_eq!(g.stages.len(), 2, "a build argument names the stage");
}

#[test]
fn copy_link_is_a_merge() {
    let g = build("FROM busybox\nCOPY --link a /a\n");
    let merge = root(&g);
    assert!(matches!(merge.kind, Some(op::Kind::Merge(_))));
    let copy = vertex(&g, &merge.inputs[1]);
    let Some(op::Kind::File(f)) = &copy.kind else {
        panic!()
    };
    assert_eq!(f.base, -1, "a linked copy does not read the stage");
    let other = build("FROM alpine\nCOPY --link a /a\n");
    assert_eq!(
        merge.inputs[1],
        vertex(&other, other.target_stage().root.as_ref().unwrap()).inputs[1]
    );
}

#[test]
fn copy_heredocs() {
    let g = build(
        "FROM busybox\nARG NAME=world\nCOPY <<EOF <<'RAW' /etc/\nhello \"$NAME\" \\$x\nEOF\n$NAME\nRAW\n",
    );
    let c = copies(root(&g));
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].sources, ["/EOF"]);
    let file = |c: &FileCopy| {
        let op = vertex(&g, &root(&g).inputs[c.input as usize]);
        let Some(op::Kind::File(f)) = &op.kind else {
            panic!()
        };
        let Some(file_action::Action::Mkfile(m)) = &f.actions[0].action else {
            panic!()
        };
        String::from_utf8(m.data.clone()).unwrap()
    };
    assert_eq!(file(c[0]), "hello \"world\" $x\n");
    assert_eq!(file(c[1]), "$NAME\n");
}

#[test]
fn add_sources() {
    let g = build(concat!(
        "FROM busybox\n",
        "ADD --checksum=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 https://example.com/dl/tool.tar.gz /opt/\n",
        "ADD --keep-git-dir https://github.com/moby/buildkit.git#v0.10.1:docs /docs\n",
        "ADD app.tar.gz /srv/\n",
    ));
    let sources: Vec<_> = g
        .vertices
        .iter()
        .filter_map(|v| match &v.op.kind {
            Some(op::Kind::Source(s)) => s.source.clone(),
            _ => None,
        })
        .collect();
    assert!(
        sources
            .iter()
            .any(|s| matches!(s, source_op::Source::Http(h)
        if h.filename == "tool.tar.gz" && h.checksum == "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"))
    );
    assert!(sources.iter().any(|s| matches!(s, source_op::Source::Git(git)
        if git.remote == "https://github.com/moby/buildkit.git" && git.r#ref == "v0.10.1" && git.subdir == "docs" && git.keep_git_dir)));
    let c = copies(root(&g));
    assert!(c[0].unpack_archives, "ADD unpacks local archives");
    let g = build("FROM busybox\nADD --unpack=false app.tar.gz /srv/\n");
    assert!(!copies(root(&g))[0].unpack_archives);
}

#[test]
fn onbuild_triggers_of_the_base_run_after_from() {
    struct WithTriggers;
    impl ImageResolver for WithTriggers {
        fn resolve(&self, r: &Reference, _: &Platform) -> Result<Option<ResolvedImage>, String> {
            Ok(Some(ResolvedImage {
                digest: Some(format!("sha256:{}", "b".repeat(64))),
                config: ImageConfig {
                    on_build: Some(vec!["ENV FROM_TRIGGER=1".into(), "RUN echo trig".into()]),
                    env: Some(vec!["PATH=/bin".into(), format!("BASE={}", r.path)]),
                    ..ImageConfig::default()
                },
            }))
        }
    }
    let options = ConvertOptions {
        resolver: &WithTriggers,
        ..options()
    };
    let g = build_with("FROM base\nRUN echo $BASE\n", &options);
    let c = config(&g);
    assert_eq!(c.env_var("FROM_TRIGGER"), Some("1"));
    assert_eq!(c.env_var("PATH"), Some("/bin"), "the base's PATH is kept");
    assert_eq!(c.on_build, None, "triggers are consumed");
    let run = root(&g);
    let trigger_run = vertex(&g, &run.inputs[0]);
    assert_eq!(
        exec(trigger_run).meta.as_ref().unwrap().args[2],
        "echo trig"
    );
    let from = vertex(&g, &trigger_run.inputs[0]);
    let Some(op::Kind::Source(s)) = &from.kind else {
        panic!()
    };
    assert!(
        matches!(&s.source, Some(source_op::Source::Image(i)) if i.reference.ends_with(&"b".repeat(64)))
    );
    assert_eq!(
        g.target_stage()
            .image
            .base
            .as_deref()
            .map(|b| b.contains("@sha256:")),
        Some(true)
    );
}

#[test]
fn errors_name_line_and_instruction() {
    assert_eq!(
        error("FROM busybox\n\nCOPY a b /dest\n"),
        "line 3: COPY a b /dest: when using COPY with more than one source file, the destination must be a directory and end with a /"
    );
    assert!(
        error("FROM busybox\nCOPY ../x /x\n")
            .contains("forbidden path outside the build context: ../x")
    );
    assert!(
        error("FROM busybox\nRUN --mount=type=bind,source=../../etc,target=/e cat\n")
            .contains("outside the build context")
    );
    assert!(
        error("FROM busybox\nCOPY --chmod=u+q a /a\n").contains("invalid chmod parameter: 'u+q'")
    );
    assert!(error("FROM busybox\nCOPY --chown=:g a /a\n").contains("--chown"));
    assert!(
        error("FROM busybox\nEXPOSE 80/icmp\n").starts_with("line 2: EXPOSE 80/icmp: invalid port")
    );
    assert!(error("FROM busybox\nSTOPSIGNAL SIGNOPE\n").contains("invalid signal"));
    assert!(error("FROM busybox\nENV A=\"${B:?must be set}\"\n").contains("B: must be set"));
    assert!(error("ARG B\nFROM $B\n").contains("base name ($B) should not be blank"));
    assert!(error("FROM --platform=linux/ busybox\n").contains("invalid platform"));
    assert!(error("FROM Busybox\n").contains("invalid reference format"));
    assert!(
        error("FROM busybox AS a\nCOPY --from=b / /\nFROM busybox AS b\nCOPY --from=a / /\n")
            .contains("circular dependency")
    );
    assert!(
        error("FROM busybox AS a\nCOPY --from=a / /\n")
            .contains("circular dependency detected on stage: a")
    );
    assert!(
        error("FROM busybox\nRUN --mount=type=cache,target=/c,sharing=maybe x\n")
            .contains("unsupported sharing value")
    );
    assert!(
        error("FROM busybox\nRUN --mount=type=bind x\n").contains("mount target must be specified")
    );
    assert!(
        error("FROM busybox\nRUN --mount=type=tmpfs,target=/t,from=x y\n")
            .contains("only for bind and cache")
    );
    assert!(error("FROM busybox\nADD --checksum=sha256:0 local /x\n").contains("--checksum"));
    assert!(
        error("FROM busybox\nCOPY https://example.com/x /x\n").contains("COPY sources must be")
    );
    let e = convert_dockerfile(
        "FROM busybox\n",
        &ConvertOptions {
            target: Some("nope".into()),
            ..options()
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "target stage \"nope\" could not be found");
}

#[test]
fn json_output_is_readable() {
    let g = build(
        "FROM busybox\nRUN --network=none --mount=type=cache,target=/c true\nCOPY <<EOF /f\nhi\nEOF\n",
    );
    let json = serde_json::to_string(&g).unwrap();
    assert!(json.contains("\"network\":\"NETWORK_MODE_NONE\""));
    assert!(json.contains("\"type\":\"MOUNT_TYPE_CACHE\""));
    assert!(json.contains("\"data\":\"hi\\n\""));
}

/// `FROM scratch AS s0`, then `n` stages each on the one before.
fn chain(n: usize, link: impl Fn(usize) -> String) -> String {
    let mut text = "FROM scratch AS s0\n".to_owned();
    for i in 1..=n {
        text.push_str(&link(i));
    }
    text
}

#[test]
fn stage_chains_are_bounded_with_the_line() {
    // The bound holds on the stack the builder gives conversion, in a
    // debug build (whose frames are the largest).
    let run = |text: String| {
        std::thread::Builder::new()
            .stack_size(CONVERT_STACK)
            .spawn(move || {
                convert_dockerfile(&text, &options())
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .unwrap()
            .join()
            .unwrap()
    };
    let from = |i: usize| format!("FROM s{} AS s{i}\n", i - 1);
    assert!(run(chain(MAX_STAGE_DEPTH - 1, from)).is_ok());
    let err = run(chain(3000, from)).unwrap_err();
    // The target is s3000 (line 3001); 128 stages in, s2873 needs s2872.
    assert_eq!(
        err,
        "line 2874: FROM s2872 AS s2873: stages depend on one another more than 128 deep (the limit)"
    );
    let copy_from = |i: usize| format!("FROM scratch AS s{i}\nCOPY --from=s{} / /\n", i - 1);
    let err = run(chain(3000, copy_from)).unwrap_err();
    assert!(
        err.ends_with("stages depend on one another more than 128 deep (the limit)"),
        "{err}"
    );
    assert!(
        err.starts_with("line ") && err.contains(": COPY --from=s"),
        "{err}"
    );
}

#[test]
fn expanded_values_are_bounded() {
    let mut text = "FROM scratch\nENV a=0123456789abcdef\n".to_owned();
    text.push_str(&"ENV a=$a$a\n".repeat(40));
    assert_eq!(
        error(&text),
        "line 19: ENV a=$a$a: failed to expand \"$a$a\": the expanded word is longer than 1048576 bytes (the limit of one word)"
    );
    let mut text = "FROM scratch\nARG a=0123456789abcdef\n".to_owned();
    text.push_str(&"ARG a=$a$a\n".repeat(15));
    text.push_str("LABEL l1=$a l2=$a l3=$a\n");
    text.push_str("ENV e1=$a e2=$a e3=$a e4=$a\n");
    let err = error(&text);
    assert_eq!(
        err,
        "line 19: ENV e1=$a e2=$a e3=$a e4=$a: ENV, ARG and LABEL values of one stage exceed 4194304 bytes (the limit)"
    );
    // Each stage within its own bound, all together over theirs.
    let mut text = "FROM scratch AS big\nENV a=0123456789abcdef\n".to_owned();
    text.push_str(&"ENV a=$a$a$a$a\n".repeat(7));
    text.push_str("ENV b=$a c=$a d=$a\n");
    for i in 0..100 {
        text.push_str(&format!("FROM big AS c{i}\n"));
    }
    text.push_str("FROM scratch\n");
    for i in 0..100 {
        text.push_str(&format!("COPY --from=c{i} / /\n"));
    }
    let err = error(&text);
    // Named at the FROM of the stage that went over.
    assert!(
        err.starts_with("line ")
            && err.contains(": FROM big AS c")
            && err.ends_with(
                "ENV, ARG and LABEL values of all stages together exceed 67108864 bytes (the limit)"
            ),
        "{err}"
    );
}

#[test]
fn a_cancelled_conversion_stops() {
    let cancelled = std::sync::atomic::AtomicBool::new(false);
    let check = || cancelled.load(std::sync::atomic::Ordering::Relaxed);
    let options = ConvertOptions {
        cancel: Some(Cancel(&check)),
        ..options()
    };
    let text = "FROM scratch\nENV a=b\nRUN true\n";
    assert!(convert_dockerfile(text, &options).is_ok());
    cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        convert_dockerfile(text, &options).unwrap_err().to_string(),
        "line 2: ENV a=b: cancelled"
    );
}

/// As BuildKit's NormalizeWorkdir: an absolute WORKDIR is kept as written,
/// a relative one is joined and cleaned.
#[test]
fn workdir_as_written_when_absolute() {
    let g = build("FROM busybox\nWORKDIR /with/slash/\n");
    assert_eq!(config(&g).working_dir.as_deref(), Some("/with/slash/"));
    let g = build("FROM busybox\nWORKDIR /a/\nWORKDIR b/../c/\n");
    assert_eq!(config(&g).working_dir.as_deref(), Some("/a/c"));
}

fn sandboxed(args: &[(&str, &str)], sandbox: kiln_proto::sandbox::SandboxOptions) -> BuildGraph {
    build_with(
        "FROM busybox\nRUN hostname\n",
        &ConvertOptions {
            sandbox,
            ..with_args(args)
        },
    )
}

#[test]
fn sandbox_options_reach_every_run_and_its_digest() {
    use kiln_proto::sandbox::{ExtraHost, SandboxOptions, Ulimit};
    let options = SandboxOptions {
        hostname: None,
        extra_hosts: vec![ExtraHost::parse("db:10.0.0.5").unwrap()],
        ulimits: vec![Ulimit::parse("nofile=1024:2048").unwrap()],
        shm_size: Some(128 << 20),
    };
    let g = sandboxed(&[("BUILDKIT_SANDBOX_HOSTNAME", "builder")], options.clone());
    let meta = exec(root(&g)).meta.clone().unwrap();
    assert_eq!(meta.hostname, "builder");
    assert_eq!(meta.extra_hosts[0].ip, "10.0.0.5");
    assert_eq!(meta.ulimits[0].name, "nofile");
    assert_eq!(meta.shm_size, 128 << 20);
    assert!(g.warnings.is_empty(), "a BUILDKIT_ arg is never unused");

    let plain = sandboxed(&[], SandboxOptions::default());
    assert_eq!(exec(root(&plain)).meta.as_ref().unwrap().hostname, "");
    let digest = |g: &BuildGraph| g.target_stage().root.clone();
    let with = |change: &dyn Fn(&mut SandboxOptions)| {
        let mut o = options.clone();
        change(&mut o);
        digest(&sandboxed(&[("BUILDKIT_SANDBOX_HOSTNAME", "builder")], o))
    };
    let base = digest(&g);
    assert_ne!(base, digest(&plain));
    assert_ne!(base, digest(&sandboxed(&[], options.clone())), "hostname");
    assert_ne!(base, with(&|o| o.shm_size = None), "shm size");
    assert_ne!(base, with(&|o| o.ulimits.clear()), "ulimits");
    assert_ne!(
        base,
        with(&|o| o.extra_hosts = vec![ExtraHost::parse("cache:10.0.0.5").unwrap()]),
        "host names"
    );
    // As BuildKit: where a name points is not the step's identity.
    assert_eq!(
        base,
        with(&|o| o.extra_hosts = vec![ExtraHost::parse("db:10.0.0.6").unwrap()]),
        "addresses"
    );
}

#[test]
fn the_sandbox_hostname_is_a_checked_build_arg_only() {
    let err = convert_dockerfile(
        "FROM busybox\nRUN hostname\n",
        &with_args(&[("BUILDKIT_SANDBOX_HOSTNAME", "bad_name")]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("invalid BUILDKIT_SANDBOX_HOSTNAME \"bad_name\""),
        "{err}"
    );
    // Empty is the default; a Dockerfile's ARG is not the build's setting.
    for (text, args) in [
        (
            "FROM busybox\nRUN hostname\n",
            vec![("BUILDKIT_SANDBOX_HOSTNAME", "")],
        ),
        (
            "ARG BUILDKIT_SANDBOX_HOSTNAME=mine\nFROM busybox\nRUN hostname\n",
            vec![],
        ),
    ] {
        let g = build_with(text, &with_args(&args));
        assert_eq!(exec(root(&g)).meta.as_ref().unwrap().hostname, "");
    }
}
