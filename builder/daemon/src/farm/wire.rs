//! Steps and layers between kiln's types and `kiln.farm.v1`'s messages.

use std::path::PathBuf;

use kiln_proto::farm::v1 as pb;
use kiln_proto::sandbox::{ExtraHost, SandboxOptionError, SandboxOptions, Ulimit, check_hostname};
use kiln_worker::exec::{ExecMount, ExecRequest, Sharing};
use kiln_worker::sandbox::spec::Network;
use kiln_worker::snapshot::Snapshots;

use kiln_image::compress::{Kind, LayerCompression};
use kiln_image::image::Layer;
use kiln_solver::solve::{Source, Step, StepMount};

pub fn layer_message(layer: &Layer) -> pb::Layer {
    pb::Layer {
        digest: layer.blob.to_string(),
        diff_id: layer.diff_id.to_string(),
        media_type: layer.media_type.clone(),
        size: layer.size,
    }
}

/// A layer as the message names it; `None` if a digest is not one.
pub fn layer_of(message: &pb::Layer) -> Option<Layer> {
    Some(Layer {
        blob: message.digest.parse().ok()?,
        diff_id: message.diff_id.parse().ok()?,
        media_type: message.media_type.clone(),
        size: message.size,
        // A worker's layers are its steps' (zstd or uncompressed): no
        // annotations cross.
        annotations: std::collections::BTreeMap::new(),
    })
}

/// The step's layer compression; `None` if the message names none kiln has.
pub fn compression_of(step: &pb::RunStep) -> Option<LayerCompression> {
    LayerCompression::parse(&step.compression)?.with_level(step.compression_level)
}

fn sharing_message(sharing: Sharing) -> i32 {
    (match sharing {
        Sharing::Shared => pb::cache_mount::Sharing::Shared,
        Sharing::Private => pb::cache_mount::Sharing::Private,
        Sharing::Locked => pb::cache_mount::Sharing::Locked,
    }) as i32
}

/// A step the solver offers, as the message a worker runs; `None` if one
/// of its mounts cannot leave this machine (a directory only it has, a
/// seeded cache, an SSH agent). The build context travels as a layer,
/// made the first time a step asks for it.
pub fn run_step(step: &Step<'_>) -> kiln_solver::solve::Result<Option<pb::RunStep>> {
    let mut mounts = Vec::with_capacity(step.mounts.len());
    for mount in &step.mounts {
        match step_mount_message(mount)? {
            Some(message) => mounts.push(message),
            None => return Ok(None),
        }
    }
    let request = step.request;
    // A layer crosses the network compressed: zstd, fast both ways, when
    // the solver keeps its own uncompressed.
    let compression = match step.compression.kind {
        Kind::Uncompressed => LayerCompression::of(Kind::Zstd),
        _ => step.compression,
    };
    let mut message = pb::RunStep {
        step: 0,
        rootfs: step.rootfs.iter().map(layer_message).collect(),
        args: request.args.clone(),
        env: request.env.clone(),
        cwd: request.cwd.clone(),
        user: request.user.clone(),
        network_none: request.network == Network::None,
        network_host: request.network == Network::Host,
        privileged: request.privileged,
        // The worker checks both against its own operator's allowance.
        entitlements: step.entitlements.names(),
        mounts,
        compression: compression.name().to_owned(),
        compression_level: compression.level,
        source_date_epoch: step.source_date_epoch,
        platform: request.platform.clone(),
        ..pb::RunStep::default()
    };
    set_sandbox(&mut message, &request.sandbox);
    Ok(Some(message))
}

/// A step's layers for placing it: the snapshot name and size of each
/// (its root filesystem's and its bind mounts').
pub fn step_layers(step: &pb::RunStep) -> Vec<(String, u64)> {
    let bound = step.mounts.iter().flat_map(|m| match &m.kind {
        Some(pb::mount::Kind::Bind(bind)) => bind.layers.as_slice(),
        _ => &[],
    });
    step.rootfs
        .iter()
        .chain(bound)
        .map(|l| (Snapshots::name(&l.diff_id).to_owned(), l.size))
        .collect()
}

fn step_mount_message(mount: &StepMount<'_>) -> kiln_solver::solve::Result<Option<pb::Mount>> {
    Ok(match mount {
        StepMount::Bind {
            target,
            source,
            path,
            readonly,
        } => {
            let layers = match source {
                Source::Layers(layers) => layers.clone(),
                Source::Context(context) => vec![(context.layer)()?],
                Source::Dir(_) => return Ok(None),
            };
            Some(pb::Mount {
                target: target.clone(),
                kind: Some(pb::mount::Kind::Bind(pb::BindMount {
                    layers: layers.iter().map(layer_message).collect(),
                    path: path.clone(),
                    readonly: *readonly,
                })),
            })
        }
        StepMount::Made { mount, secret } => mount_message(mount, secret.as_deref()),
        // A seeded cache is this machine's (its layers are).
        StepMount::SeededCache { .. } => None,
    })
}

/// A mount a worker makes itself, as a message (a secret's value carried);
/// `None` for one that needs this machine (an SSH agent, a bind mount of
/// its directories, a seeded cache).
fn mount_message(mount: &ExecMount, secret: Option<&[u8]>) -> Option<pb::Mount> {
    let (target, kind) = match mount {
        // A seeded cache is this machine's (its layers are).
        ExecMount::Cache { seed: Some(_), .. } => return None,
        ExecMount::Cache {
            target,
            id,
            sharing,
            uid,
            gid,
            mode,
            readonly,
            seed: None,
        } => (
            target.clone(),
            pb::mount::Kind::Cache(pb::CacheMount {
                id: id.clone(),
                sharing: sharing_message(*sharing),
                uid: *uid,
                gid: *gid,
                mode: *mode,
                readonly: *readonly,
            }),
        ),
        ExecMount::Tmpfs { target, size } => (
            target.clone(),
            pb::mount::Kind::Tmpfs(pb::TmpfsMount { size: *size }),
        ),
        ExecMount::Secret {
            id,
            target,
            env,
            uid,
            gid,
            mode,
            required,
        } => (
            target.clone().unwrap_or_default(),
            pb::mount::Kind::Secret(pb::SecretMount {
                id: id.clone(),
                value: secret.map(<[u8]>::to_vec),
                env: env.clone().unwrap_or_default(),
                uid: *uid,
                gid: *gid,
                mode: *mode,
                required: *required,
            }),
        ),
        ExecMount::Bind { .. } | ExecMount::Ssh { .. } => return None,
    };
    Some(pb::Mount {
        target,
        kind: Some(kind),
    })
}

fn sharing_of(value: i32) -> Sharing {
    match pb::cache_mount::Sharing::try_from(value) {
        Ok(pb::cache_mount::Sharing::Private) => Sharing::Private,
        Ok(pb::cache_mount::Sharing::Locked) => Sharing::Locked,
        _ => Sharing::Shared,
    }
}

/// Secrets a step carries, by id.
pub type Secrets = Vec<(String, Vec<u8>)>;

/// Sets the step's hostname, `/etc/hosts` entries, limits and `/dev/shm`
/// size: they travel with it, the worker's sandbox applies them.
pub fn set_sandbox(step: &mut pb::RunStep, sandbox: &SandboxOptions) {
    step.hostname = sandbox.hostname.clone().unwrap_or_default();
    step.extra_hosts = sandbox
        .extra_hosts
        .iter()
        .map(|h| pb::ExtraHost {
            host: h.host().to_owned(),
            ip: h.ip().to_string(),
        })
        .collect();
    step.ulimits = sandbox
        .ulimits
        .iter()
        .map(|u| pb::Ulimit {
            name: u.name().as_str().to_owned(),
            soft: u.soft(),
            hard: u.hard(),
        })
        .collect();
    step.shm_size = sandbox.shm_size;
}

/// The sandbox options a step carries, checked as the CLI checks them: a
/// worker writes them into `/etc/hosts` and the kernel.
pub fn sandbox_of(step: &pb::RunStep) -> Result<SandboxOptions, SandboxOptionError> {
    let hostname = (!step.hostname.is_empty())
        .then(|| check_hostname(&step.hostname).map(|()| step.hostname.clone()))
        .transpose()?;
    let extra_hosts = step
        .extra_hosts
        .iter()
        .map(|h| ExtraHost::new(&h.host, &h.ip))
        .collect::<Result<_, _>>()?;
    let ulimits = step
        .ulimits
        .iter()
        .map(|u| Ulimit::new(&u.name, u.soft, u.hard))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SandboxOptions {
        hostname,
        extra_hosts,
        ulimits: Ulimit::merge(ulimits),
        shm_size: step.shm_size,
    })
}

/// A step as the worker runs it: its request, with layer lists made
/// directories (top first) by `dirs` (`empty` for a bind mount of none),
/// and the secrets it carries.
pub fn exec_request<E: From<SandboxOptionError>>(
    step: &pb::RunStep,
    empty: &std::path::Path,
    mut dirs: impl FnMut(&[pb::Layer]) -> Result<Vec<PathBuf>, E>,
) -> Result<(ExecRequest, Secrets), E> {
    let mut mounts = Vec::new();
    let mut secrets = Vec::new();
    for m in &step.mounts {
        let target = m.target.clone();
        let mount = match &m.kind {
            Some(pb::mount::Kind::Bind(b)) => ExecMount::Bind {
                target,
                layers: if b.layers.is_empty() {
                    vec![empty.to_owned()]
                } else {
                    dirs(&b.layers)?
                },
                path: b.path.clone(),
                readonly: b.readonly,
            },
            Some(pb::mount::Kind::Cache(c)) => ExecMount::Cache {
                target,
                id: c.id.clone(),
                sharing: sharing_of(c.sharing),
                uid: c.uid,
                gid: c.gid,
                mode: c.mode,
                readonly: c.readonly,
                seed: None,
            },
            Some(pb::mount::Kind::Tmpfs(t)) => ExecMount::Tmpfs {
                target,
                size: t.size,
            },
            Some(pb::mount::Kind::Secret(s)) => {
                if let Some(value) = &s.value {
                    secrets.push((s.id.clone(), value.clone()));
                }
                ExecMount::Secret {
                    id: s.id.clone(),
                    target: (!target.is_empty()).then_some(target),
                    env: (!s.env.is_empty()).then(|| s.env.clone()),
                    uid: s.uid,
                    gid: s.gid,
                    mode: s.mode,
                    required: s.required,
                }
            }
            None => continue,
        };
        mounts.push(mount);
    }
    let request = ExecRequest {
        sandbox: sandbox_of(step)?,
        rootfs: dirs(&step.rootfs)?,
        args: step.args.clone(),
        env: step.env.clone(),
        cwd: step.cwd.clone(),
        user: step.user.clone(),
        network: match (step.network_none, step.network_host) {
            (true, _) => Network::None,
            (false, true) => Network::Host,
            (false, false) => Network::Private,
        },
        privileged: step.privileged,
        mounts,
        platform: step.platform.clone(),
    };
    Ok((request, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_options_and_platform_travel_with_the_step() {
        let sandbox = SandboxOptions {
            hostname: Some("builder".into()),
            extra_hosts: vec![
                ExtraHost::parse("db:10.0.0.5").unwrap(),
                ExtraHost::parse("v6=[fd00::5]").unwrap(),
            ],
            ulimits: vec![
                Ulimit::parse("nofile=1024:2048").unwrap(),
                Ulimit::parse("core=-1").unwrap(),
            ],
            shm_size: Some(128 << 20),
        };
        let mut step = pb::RunStep {
            platform: "linux/arm64".into(),
            ..Default::default()
        };
        set_sandbox(&mut step, &sandbox);
        let empty = std::path::Path::new("/empty");
        let (request, _) =
            exec_request::<SandboxOptionError>(&step, empty, |_| Ok(Vec::new())).unwrap();
        // Merged in name order, as the frontend makes them.
        let expected = SandboxOptions {
            ulimits: Ulimit::merge(sandbox.ulimits.clone()),
            ..sandbox
        };
        assert_eq!(request.sandbox, expected);
        assert_eq!(request.platform, "linux/arm64", "what its error names");
        let (plain, _) =
            exec_request::<SandboxOptionError>(&pb::RunStep::default(), empty, |_| Ok(Vec::new()))
                .unwrap();
        assert_eq!(plain.sandbox, SandboxOptions::default());
    }

    #[test]
    fn a_worker_refuses_what_the_cli_would() {
        let bad = [
            pb::RunStep {
                hostname: "a b".into(),
                ..Default::default()
            },
            pb::RunStep {
                extra_hosts: vec![pb::ExtraHost {
                    host: "db\n6.6.6.6 evil".into(),
                    ip: "10.0.0.5".into(),
                }],
                ..Default::default()
            },
            pb::RunStep {
                ulimits: vec![pb::Ulimit {
                    name: "nofile".into(),
                    soft: 10,
                    hard: 5,
                }],
                ..Default::default()
            },
        ];
        for step in bad {
            assert!(sandbox_of(&step).is_err(), "{step:?}");
        }
    }
}
