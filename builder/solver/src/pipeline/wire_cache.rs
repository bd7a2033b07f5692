//! [`CacheRef`] ⇄ `kiln.control.v1.CacheRef`: the typed cache message,
//! checked on the way in as the CLI's parser checks a flag (a kilnd
//! client is not trusted to have run it).

use std::path::PathBuf;

use kiln_proto::control::v1 as pb;
use kiln_registry::cache::{Backend, Direction, Mode, S3Spec};

use super::request::{CacheRef, RequestError, parse_cache};
use super::wire::{compression, compression_message};

type Result<T> = std::result::Result<T, RequestError>;

/// The message of a cache (credentials included: kilnd needs them).
pub(super) fn message(c: &CacheRef) -> pb::CacheRef {
    use pb::cache_ref::Backend as B;
    let mut out = pb::CacheRef {
        cache_mounts: c.cache_mounts,
        mode: match c.mode {
            Mode::Min => pb::CacheMode::Min,
            Mode::Max => pb::CacheMode::Max,
        } as i32,
        ignore_error: c.ignore_error,
        compression: c.compression.map(compression_message),
        ..Default::default()
    };
    match &c.backend {
        Backend::Registry { reference } => out.r#ref = reference.clone(),
        Backend::Local {
            dir,
            tag,
            digest,
            reset,
        } => {
            out.backend = Some(B::Local(pb::LocalCache {
                dir: dir.display().to_string(),
                tag: tag.clone(),
                digest: digest.clone().unwrap_or_default(),
                reset: *reset,
            }));
        }
        Backend::Inline => out.backend = Some(B::Inline(pb::InlineCache {})),
        Backend::S3(s3) => out.backend = Some(B::S3(s3_message(s3))),
    }
    out
}

fn s3_message(s3: &S3Spec) -> pb::S3Cache {
    pb::S3Cache {
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        endpoint_url: s3.endpoint_url.clone().unwrap_or_default(),
        use_path_style: s3.use_path_style,
        prefix: s3.prefix.clone(),
        names: s3.names.clone(),
        blobs_prefix: Some(s3.blobs_prefix.clone()),
        manifests_prefix: Some(s3.manifests_prefix.clone()),
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
        session_token: s3.session_token.clone(),
    }
}

/// The typed caches, else the legacy specs (read without any
/// environment: kilnd's AWS variables are never a client's).
pub(super) fn caches(
    flag: &'static str,
    typed: &[pb::CacheRef],
    legacy: &[String],
) -> Result<Vec<CacheRef>> {
    let direction = if flag == "--cache-to" {
        Direction::Export
    } else {
        Direction::Import
    };
    if typed.is_empty() {
        return legacy
            .iter()
            .map(|s| parse_cache(flag, direction, s, &|_| None))
            .collect();
    }
    typed.iter().map(|c| cache(flag, direction, c)).collect()
}

fn cache(flag: &'static str, direction: Direction, c: &pb::CacheRef) -> Result<CacheRef> {
    use pb::cache_ref::Backend as B;
    let invalid = |value: &str, reason: &str| RequestError::Invalid {
        flag,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let backend = match &c.backend {
        None if c.r#ref.is_empty() => return Err(invalid("", "no ref=")),
        None => Backend::Registry {
            reference: c.r#ref.clone(),
        },
        Some(B::Local(l)) => {
            if l.dir.is_empty() {
                return Err(invalid("type=local", "no directory"));
            }
            let digest = (!l.digest.is_empty()).then(|| l.digest.clone());
            if let Some(d) = &digest {
                d.parse::<kiln_cache::Digest>()
                    .map_err(|e| invalid(d, &e.to_string()))?;
            }
            Backend::Local {
                dir: PathBuf::from(&l.dir),
                tag: if l.tag.is_empty() {
                    "latest".into()
                } else {
                    l.tag.clone()
                },
                digest,
                reset: l.reset,
            }
        }
        Some(B::Inline(_)) if direction == Direction::Import => {
            return Err(invalid("type=inline", "exports only"));
        }
        Some(B::Inline(_)) => Backend::Inline,
        Some(B::S3(s3)) => Backend::S3(s3_spec(s3).map_err(|r| invalid("type=s3", r))?),
    };
    let mode = match pb::CacheMode::try_from(c.mode) {
        Ok(pb::CacheMode::Unspecified | pb::CacheMode::Min) => Mode::Min,
        Ok(pb::CacheMode::Max) => Mode::Max,
        Err(_) => return Err(invalid(&c.mode.to_string(), "mode is min or max")),
    };
    Ok(CacheRef {
        backend,
        mode,
        ignore_error: c.ignore_error,
        cache_mounts: c.cache_mounts,
        compression: c.compression.as_ref().map(compression).transpose()?,
    })
}

fn s3_spec(s3: &pb::S3Cache) -> std::result::Result<S3Spec, &'static str> {
    if s3.bucket.is_empty() {
        return Err("no bucket=");
    }
    let names: Vec<String> = s3.names.iter().filter(|n| !n.is_empty()).cloned().collect();
    Ok(S3Spec {
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        endpoint_url: (!s3.endpoint_url.is_empty()).then(|| s3.endpoint_url.clone()),
        use_path_style: s3.use_path_style,
        prefix: s3.prefix.clone(),
        names: if names.is_empty() {
            vec!["buildkit".into()]
        } else {
            names
        },
        blobs_prefix: s3.blobs_prefix.clone().unwrap_or_else(|| "blobs/".into()),
        manifests_prefix: s3
            .manifests_prefix
            .clone()
            .unwrap_or_else(|| "manifests/".into()),
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.clone(),
        session_token: s3.session_token.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_backend_round_trips() {
        let env = |k: &str| {
            (k == "AWS_ACCESS_KEY_ID" || k == "AWS_SECRET_ACCESS_KEY").then(|| "x".to_owned())
        };
        let exports = [
            "type=registry,ref=r/c:1,mode=max,cache-mounts=true",
            "type=local,dest=/tmp/c,tag=v2,reset=true,ignore-error=true",
            "type=inline",
            "type=s3,bucket=b,region=r,endpoint_url=http://127.0.0.1:1,use_path_style=true,name=a;b,compression=zstd",
        ];
        for spec in exports {
            let cache = parse_cache("--cache-to", Direction::Export, spec, &env).unwrap();
            let back = caches("--cache-to", &[message(&cache)], &[]).unwrap();
            assert_eq!(back, [cache], "{spec}");
        }
        let digest = format!("sha256:{}", "b".repeat(64));
        let local = format!("type=local,src=/c,digest={digest}");
        let cache = parse_cache("--cache-from", Direction::Import, &local, &env).unwrap();
        assert_eq!(
            caches("--cache-from", &[message(&cache)], &[]).unwrap(),
            [cache]
        );
    }

    #[test]
    fn a_clients_hostile_caches_are_refused() {
        let inline = pb::CacheRef {
            backend: Some(pb::cache_ref::Backend::Inline(pb::InlineCache {})),
            ..Default::default()
        };
        assert!(caches("--cache-from", &[inline], &[]).is_err());
        let bad_mode = pb::CacheRef {
            r#ref: "r/c".into(),
            mode: 7,
            ..Default::default()
        };
        assert!(caches("--cache-to", &[bad_mode], &[]).is_err());
        let bad_digest = pb::CacheRef {
            backend: Some(pb::cache_ref::Backend::Local(pb::LocalCache {
                dir: "/c".into(),
                digest: "sha256:nope".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert!(caches("--cache-from", &[bad_digest], &[]).is_err());
    }
}
