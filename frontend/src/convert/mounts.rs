//! `RUN --mount=…` → an op mount: values expanded with the stage's
//! variables, defaults filled in as BuildKit does.

use kiln_proto::ops::v1::{CacheOpt, CacheSharing, Mount, MountType, SecretOpt, SshOpt, TmpfsOpt};

use super::state::StageState;
use super::{ConvertErrorKind as Kind, Converter, FromUser, expand};
use crate::instructions::MountSpec;
use crate::paths::{base_name, clean, in_context};

/// A mount spec with its values expanded.
struct Expanded<'a> {
    spec: &'a MountSpec,
    fields: Vec<(String, Option<String>)>,
}

impl Expanded<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == key)
    }

    fn bad(&self, reason: impl Into<String>) -> Kind {
        Kind::Mount {
            spec: self.spec.raw.clone(),
            reason: reason.into(),
        }
    }

    /// A boolean field: absent → `None`; bare → true; else Go's ParseBool.
    fn flag(&self, key: &str) -> Result<Option<bool>, Kind> {
        let Some((_, value)) = self.fields.iter().rev().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        match value.as_deref() {
            None | Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(other) => Err(self.bad(format!("{key}={other} is not a boolean"))),
        }
    }

    /// `readonly`/`ro` and `readwrite`/`rw`, over a default.
    fn readonly(&self, default: bool) -> Result<bool, Kind> {
        Ok(match (self.flag("readonly")?, self.flag("readwrite")?) {
            (Some(ro), _) => ro,
            (None, Some(rw)) => !rw,
            (None, None) => default,
        })
    }

    fn number(&self, key: &str, default: u32) -> Result<u32, Kind> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| self.bad(format!("{key}={v} is not a number"))),
        }
    }

    fn mode(&self, default: u32) -> Result<u32, Kind> {
        match self.get("mode") {
            None => Ok(default),
            Some(v) => u32::from_str_radix(v, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| self.bad(format!("mode={v} is not an octal mode"))),
        }
    }

    /// `type=`: bind when absent.
    fn kind(&self) -> Result<MountType, Kind> {
        Ok(match self.get("type").unwrap_or("bind") {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            other => return Err(self.bad(format!("unsupported mount type {other:?}"))),
        })
    }

    /// `target=`, cleaned and relative to `workdir`; `None` when absent or
    /// empty.
    fn target(&self, workdir: &str) -> Option<String> {
        self.get("target").filter(|t| !t.is_empty()).map(|t| {
            if t.starts_with('/') {
                clean(t)
            } else {
                clean(&format!("{workdir}/{t}"))
            }
        })
    }

    /// `type=cache`'s options; the cache's id is its target unless named.
    fn cache(&self, target: &str) -> Result<CacheOpt, Kind> {
        let sharing = match self.get("sharing").unwrap_or("shared") {
            "shared" => CacheSharing::Shared,
            "private" => CacheSharing::Private,
            "locked" => CacheSharing::Locked,
            other => return Err(self.bad(format!("unsupported sharing value {other:?}"))),
        };
        Ok(CacheOpt {
            id: self
                .get("id")
                .filter(|i| !i.is_empty())
                .unwrap_or(target)
                .to_owned(),
            sharing: sharing as i32,
            uid: self.number("uid", 0)?,
            gid: self.number("gid", 0)?,
            mode: self.mode(0o755)?,
        })
    }

    /// `type=tmpfs`: a target, and a size (0: the default).
    fn tmpfs(&self, target: Option<String>) -> Result<Mount, Kind> {
        let target = target.ok_or_else(|| self.bad("mount target must be specified"))?;
        let size = self
            .get("size")
            .map(|s| parse_size(s).ok_or_else(|| self.bad(format!("invalid size {s:?}"))));
        Ok(Mount {
            tmpfs: Some(TmpfsOpt {
                size: size.transpose()?.unwrap_or(0),
            }),
            ..new_mount(MountType::Tmpfs, target)
        })
    }

    /// `type=secret`, read-only: the id defaults to the target's file name
    /// or the `env=` name; the target to `/run/secrets/<id>`, or none when
    /// the secret goes only into `env=`.
    fn secret(&self, target: Option<String>) -> Result<Mount, Kind> {
        let env = self.get("env").unwrap_or_default().to_owned();
        let id = match (self.get("id").filter(|i| !i.is_empty()), &target) {
            (Some(id), _) => id.to_owned(),
            (None, Some(t)) => base_name(t).to_owned(),
            (None, None) if !env.is_empty() => env.clone(),
            (None, None) => return Err(self.bad("secret needs an id or a target")),
        };
        let target = match target {
            Some(t) => t,
            None if !env.is_empty() => String::new(),
            None => format!("/run/secrets/{id}"),
        };
        Ok(Mount {
            readonly: true,
            secret: Some(SecretOpt {
                id,
                env,
                uid: self.number("uid", 0)?,
                gid: self.number("gid", 0)?,
                mode: self.mode(0o400)?,
                required: self.flag("required")?.unwrap_or(false),
            }),
            ..new_mount(MountType::Secret, target)
        })
    }

    /// `type=ssh`, read-only: the agent socket of id `default` unless
    /// named, at BuildKit's path unless a target is given.
    fn ssh(&self, target: Option<String>) -> Result<Mount, Kind> {
        let id = self
            .get("id")
            .filter(|i| !i.is_empty())
            .unwrap_or("default")
            .to_owned();
        let target = target.unwrap_or_else(|| "/run/buildkit/ssh_agent.0".to_owned());
        Ok(Mount {
            readonly: true,
            ssh: Some(SshOpt {
                id,
                uid: self.number("uid", 0)?,
                gid: self.number("gid", 0)?,
                mode: self.mode(0o600)?,
                required: self.flag("required")?.unwrap_or(false),
            }),
            ..new_mount(MountType::Ssh, target)
        })
    }
}

impl Converter<'_> {
    /// Builds the op mount for `spec`, adding any input it reads to
    /// `inputs`. `from=` is refused on the types that read no input only
    /// after their own options are checked (which error comes first).
    pub(super) fn mount(
        &mut self,
        state: &StageState,
        spec: &MountSpec,
        inputs: &mut Vec<String>,
    ) -> Result<Mount, Kind> {
        let m = self.expand_mount(state, spec)?;
        let kind = m.kind()?;
        let target = m.target(state.workdir());
        let mount = match kind {
            MountType::Bind | MountType::Cache => {
                self.bind_or_cache(state, &m, kind, target, inputs)?
            }
            MountType::Tmpfs => m.tmpfs(target)?,
            MountType::Secret => m.secret(target)?,
            MountType::Ssh => m.ssh(target)?,
        };
        if kind != MountType::Bind && kind != MountType::Cache && m.has("from") {
            return Err(m.bad("from= is only for bind and cache mounts"));
        }
        Ok(mount)
    }

    /// Expands every value of `spec` with the stage's variables (`from=`
    /// as `COPY --from` is).
    fn expand_mount<'s>(
        &self,
        state: &StageState,
        spec: &'s MountSpec,
    ) -> Result<Expanded<'s>, Kind> {
        let fields = spec
            .fields
            .iter()
            .map(|(k, v)| {
                let value = v.as_ref().map(|v| match k.as_str() {
                    "from" => self.expand_from(state, v),
                    _ => expand(&self.lexer, v, state),
                });
                Ok((k.clone(), value.transpose()?))
            })
            .collect::<Result<_, Kind>>()?;
        Ok(Expanded { spec, fields })
    }

    /// `type=bind` and `type=cache`: a target, what is mounted there (see
    /// [`Self::mount_source`]), read-only by default for a bind, and a
    /// cache's options.
    fn bind_or_cache(
        &mut self,
        state: &StageState,
        m: &Expanded<'_>,
        kind: MountType,
        target: Option<String>,
        inputs: &mut Vec<String>,
    ) -> Result<Mount, Kind> {
        let target = target.ok_or_else(|| m.bad("mount target must be specified"))?;
        let (input, source) = self.mount_source(state, m, kind, &target, inputs)?;
        let readonly = m.readonly(kind == MountType::Bind)?;
        let cache = match kind {
            MountType::Cache => Some(m.cache(&target)?),
            _ => None,
        };
        Ok(Mount {
            input,
            source,
            readonly,
            cache,
            ..new_mount(kind, target)
        })
    }

    /// What a bind or cache mount shows, as (input index, path in it): a
    /// path in the stage or image of `from=`; without one, a path in the
    /// build context (bind) or an empty directory (cache, no input).
    fn mount_source(
        &mut self,
        state: &StageState,
        m: &Expanded<'_>,
        kind: MountType,
        target: &str,
        inputs: &mut Vec<String>,
    ) -> Result<(i32, String), Kind> {
        let source = m.get("source").unwrap_or("/");
        match (kind, m.get("from").filter(|f| !f.is_empty())) {
            (MountType::Bind, None) => {
                let input = input_index(inputs, self.context());
                let path =
                    in_context(source).ok_or_else(|| Kind::OutsideContext(source.to_owned()))?;
                Ok((input, path))
            }
            (_, Some(from)) => {
                let input = match self.resolve_from(state, from, FromUser::Mount(target))? {
                    Some(digest) => input_index(inputs, digest),
                    None => -1,
                };
                Ok((input, clean(&format!("/{source}"))))
            }
            (_, None) => Ok((-1, "/".to_owned())),
        }
    }
}

/// A mount of `kind` at `target` that reads no input; the caller fills in
/// the rest.
fn new_mount(kind: MountType, target: String) -> Mount {
    Mount {
        r#type: kind as i32,
        input: -1,
        target,
        ..Mount::default()
    }
}

/// The index of `digest` in `inputs`, adding it when missing.
pub(super) fn input_index(inputs: &mut Vec<String>, digest: String) -> i32 {
    let index = inputs.iter().position(|d| *d == digest).unwrap_or_else(|| {
        inputs.push(digest);
        inputs.len() - 1
    });
    i32::try_from(index).expect("an op has far fewer than 2^31 inputs")
}

/// Docker's `RAMInBytes`: `64m`, `1.5g`, `512kb`, `100` (binary units).
fn parse_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let number_len = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_len);
    let value: f64 = number.parse().ok()?;
    let unit = unit
        .trim_start()
        .trim_end_matches('b')
        .trim_end_matches('i');
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0_f64.powi(4),
        "p" => 1024.0_f64.powi(5),
        _ => return None,
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((value * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("64m"), Some(64 << 20));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("2 kb"), Some(2048));
        assert_eq!(parse_size("x"), None);
    }
}
