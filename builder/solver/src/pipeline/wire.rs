//! [`Request`] ⇄ `kiln.control.v1.BuildSpec`: one conversion each way.
//! Decoding runs the checks the CLI's parser runs, with the same
//! messages: a kilnd client is not trusted to have run them.

use kiln_proto::control::v1 as pb;
use kiln_proto::sandbox::SandboxOptions;
use kiln_worker::sandbox::spec::Network;

use super::Metadata;
use super::contexts::NamedContext;
use super::request::{
    Outputs, Request, RequestError, check_labels, check_lists, check_push, normalize_names,
    parse_pull,
};
use crate::entitlements::Entitlements;
use kiln_image::compress::{Kind, LayerCompression};
use kiln_image::image::MediaTypes;
use kiln_registry::PullPolicy;

type Result<T> = std::result::Result<T, RequestError>;

impl From<&Request> for pb::BuildSpec {
    /// The request on the wire, less its file outputs (the client writes
    /// them from kilnd's Export) and its SSH sockets (only their ids: the
    /// client relays them).
    fn from(r: &Request) -> Self {
        Self {
            dockerfile: r.dockerfile.clone(),
            dockerignore: r.dockerignore.clone(),
            build_args: r.build_args.clone().into_iter().collect(),
            target: r.target.clone().unwrap_or_default(),
            platforms: r
                .platforms
                .iter()
                .map(kiln_frontend::platform::format)
                .collect(),
            tags: r.tags.clone(),
            no_cache: r.no_cache,
            no_cache_filter: r.no_cache_filter.clone(),
            secrets: r.secrets.clone().into_iter().collect(),
            network_none: r.network == Network::None,
            network_host: r.network == Network::Host,
            entitlements: r.entitlements.names(),
            context_time: r.context_time,
            ssh: r.ssh.keys().cloned().collect(),
            add_hosts: sandbox_hosts(&r.sandbox),
            ulimits: sandbox_ulimits(&r.sandbox),
            shm_size: r
                .sandbox
                .shm_size
                .map(|s| s.to_string())
                .unwrap_or_default(),
            image_output: Some(pb::ImageOutput {
                names: Vec::new(),
                push: r.push,
                compression: Some(compression_message(r.compression)),
                media_types: media_types_message(r.compression.media_types) as i32,
            }),
            pull_policy: pull_message(r.pull) as i32,
            cache_imports: r
                .cache_imports
                .iter()
                .map(super::wire_cache::message)
                .collect(),
            cache_exports: r
                .cache_exports
                .iter()
                .map(super::wire_cache::message)
                .collect(),
            registry: Some(pb::RegistryOptions {
                insecure: r.registry.insecure.clone(),
            }),
            labels: r.labels.clone().into_iter().collect(),
            oci_output: super::request::has_oci(&r.files),
            annotations: r.annotations.0.iter().map(|a| a.spec()).collect(),
            named_contexts: r
                .named_contexts
                .iter()
                .map(|(name, c)| named_message(name, c))
                .collect(),
            ..Self::default()
        }
    }
}

impl TryFrom<pb::BuildSpec> for Request {
    type Error = RequestError;

    /// The request a client sent, checked as the CLI checks its flags.
    /// The session fields (`session`, `removed`) are the transport's.
    fn try_from(spec: pb::BuildSpec) -> Result<Self> {
        let outputs = image_output(&spec)?;
        let mut tags = normalize_names("-t", &spec.tags)?;
        check_push(outputs.push, !tags.is_empty() || !outputs.names.is_empty())?;
        tags.extend(outputs.names);
        if outputs.untagged {
            tags.clear();
        }
        let sandbox = SandboxOptions::from_flags(
            &spec.add_hosts,
            &spec.ulimits,
            Some(spec.shm_size.as_str()),
        )?;
        let mut build_args: std::collections::BTreeMap<_, _> =
            spec.build_args.into_iter().collect();
        if let Some(epoch) = spec.source_date_epoch {
            build_args
                .entry("SOURCE_DATE_EPOCH".to_owned())
                .or_insert_with(|| epoch.to_string());
        }
        let labels: std::collections::BTreeMap<String, String> = spec.labels.into_iter().collect();
        check_labels(&labels)?;
        let mut annotations = super::request::parse_annotations(&spec.annotations)?;
        annotations.0.extend(outputs.annotations.0);
        let named_contexts = named_contexts(&spec.named_contexts)?;
        let request = Self {
            pull: pull_policy(spec.pull_policy, &spec.pull)?,
            cache_imports: super::wire_cache::caches(
                "--cache-from",
                &spec.cache_imports,
                &spec.cache_from,
            )?,
            cache_exports: super::wire_cache::caches(
                "--cache-to",
                &spec.cache_exports,
                &spec.cache_to,
            )?,
            network: network(spec.network_none, spec.network_host)?,
            entitlements: Entitlements::from_flag("--allow", &spec.entitlements)?,
            registry: kiln_registry::Options {
                insecure: spec.registry.map(|r| r.insecure).unwrap_or_default(),
                ..kiln_registry::Options::default()
            },
            dockerfile: spec.dockerfile,
            dockerignore: spec.dockerignore,
            build_args,
            target: (!spec.target.is_empty()).then_some(spec.target),
            platforms: super::request::parse_platforms(&spec.platforms)?,
            tags,
            labels,
            annotations,
            no_cache: spec.no_cache,
            no_cache_filter: spec.no_cache_filter,
            sandbox,
            compression: outputs.compression,
            // The client's to write.
            files: Vec::new(),
            oci_elsewhere: spec.oci_output,
            push: outputs.push,
            secrets: spec.secrets.into_iter().collect(),
            // kilnd puts its relays' sockets here.
            ssh: spec
                .ssh
                .into_iter()
                .map(|id| (id, Default::default()))
                .collect(),
            context_time: spec.context_time,
            named_contexts,
        };
        check_lists(&request)?;
        super::request::check_annotations(&request)?;
        Ok(request)
    }
}

impl TryFrom<&pb::BuildResult> for Metadata {
    type Error = RequestError;

    /// What kilnd says of the image it built, for `--metadata-file`: its
    /// digests checked as digests.
    fn try_from(result: &pb::BuildResult) -> Result<Self> {
        let parse = |field: &'static str, text: &str| {
            text.parse().map_err(|_| RequestError::Invalid {
                flag: field,
                value: text.to_owned(),
                reason: "not a digest".to_owned(),
            })
        };
        let m = result.metadata.clone().unwrap_or_default();
        let index = kiln_image::image::is_index_type(&m.media_type);
        Ok(Self {
            build_ref: m.build_ref,
            digest: parse("BuildResult.manifest", &result.manifest)?,
            // The leaving image's; from an older kilnd, the store's.
            config: match (index, m.config.as_str()) {
                (true, _) => None,
                (false, "") => Some(parse("BuildResult.config", &result.config)?),
                (false, config) => Some(parse("BuildMetadata.config", config)?),
            },
            media_type: m.media_type,
            size: m.size,
            created: (!m.created.is_empty()).then_some(m.created),
            names: result.tags.clone(),
        })
    }
}

/// A named context on the wire; a directory's session is the
/// transport's (the client fills it in), its path stays here.
fn named_message(name: &str, context: &NamedContext) -> pb::NamedContext {
    use pb::named_context::Source;
    let local = |dockerignore: &[String]| pb::LocalContext {
        dockerignore: dockerignore.to_vec(),
        ..pb::LocalContext::default()
    };
    let source = match context {
        NamedContext::Dir { dockerignore, .. } => Source::Local(local(dockerignore)),
        NamedContext::Image(reference) => Source::Image(reference.clone()),
        NamedContext::Stage(stage) => Source::Stage(stage.clone()),
        NamedContext::OciLayout { tag, digest, .. } => Source::OciLayout(pb::OciLayoutContext {
            files: Some(local(&[])),
            tag: tag.clone().unwrap_or_default(),
            digest: digest.clone().unwrap_or_default(),
        }),
    };
    pb::NamedContext {
        name: name.to_owned(),
        source: Some(source),
    }
}

/// The named contexts a client sent, each name once (checked with the
/// rest by `check_lists`). A directory's path is kilnd's to fill in, once
/// its files have arrived.
fn named_contexts(
    messages: &[pb::NamedContext],
) -> Result<std::collections::BTreeMap<String, NamedContext>> {
    use pb::named_context::Source;
    super::request::check_count("--build-context", messages.len())?;
    let mut contexts = std::collections::BTreeMap::new();
    for message in messages {
        let spec = format!("{}=…", message.name);
        let invalid = |reason: &str| RequestError::Invalid {
            flag: "--build-context",
            value: spec.clone(),
            reason: reason.to_owned(),
        };
        let context = match &message.source {
            Some(Source::Local(local)) => NamedContext::Dir {
                path: Default::default(),
                dockerignore: local.dockerignore.clone(),
            },
            Some(Source::Image(reference)) => NamedContext::Image(reference.clone()),
            Some(Source::Stage(stage)) => {
                NamedContext::Stage(super::contexts::check_stage(stage, &spec)?)
            }
            Some(Source::OciLayout(layout)) if layout.files.is_none() => {
                return Err(invalid(
                    "an OCI layout without its files (OciLayoutContext.files)",
                ));
            }
            Some(Source::OciLayout(layout)) => NamedContext::OciLayout {
                path: Default::default(),
                tag: (!layout.tag.is_empty()).then(|| layout.tag.clone()),
                digest: (!layout.digest.is_empty()).then(|| layout.digest.clone()),
            },
            None => return Err(invalid("no source (NamedContext.source)")),
        };
        if contexts.insert(message.name.clone(), context).is_some() {
            return Err(invalid("the name is given twice"));
        }
    }
    Ok(contexts)
}

fn sandbox_hosts(sandbox: &SandboxOptions) -> Vec<String> {
    // `=` first: an IPv6 address has colons.
    let hosts = sandbox.extra_hosts.iter();
    hosts.map(|h| format!("{}={}", h.host(), h.ip())).collect()
}

fn sandbox_ulimits(sandbox: &SandboxOptions) -> Vec<String> {
    let limits = sandbox.ulimits.iter();
    limits
        .map(|u| format!("{}={}:{}", u.name().as_str(), u.soft(), u.hard()))
        .collect()
}

fn network(none: bool, host: bool) -> Result<Network> {
    match (none, host) {
        (true, true) => Err(RequestError::Invalid {
            flag: "--network",
            value: "none and host".to_owned(),
            reason: "one build network (BuildSpec.network_none, network_host)".to_owned(),
        }),
        (true, false) => Ok(Network::None),
        (false, true) => Ok(Network::Host),
        (false, false) => Ok(Network::Private),
    }
}

fn pull_message(pull: PullPolicy) -> pb::PullPolicy {
    match pull {
        PullPolicy::Missing => pb::PullPolicy::Missing,
        PullPolicy::Always => pb::PullPolicy::Always,
        PullPolicy::Never => pb::PullPolicy::Never,
    }
}

/// The typed field, else the legacy string (empty: the default).
fn pull_policy(typed: i32, legacy: &str) -> Result<PullPolicy> {
    match pb::PullPolicy::try_from(typed) {
        Ok(pb::PullPolicy::Missing) => Ok(PullPolicy::Missing),
        Ok(pb::PullPolicy::Always) => Ok(PullPolicy::Always),
        Ok(pb::PullPolicy::Never) => Ok(PullPolicy::Never),
        Ok(pb::PullPolicy::Unspecified) if legacy.is_empty() => Ok(PullPolicy::default()),
        Ok(pb::PullPolicy::Unspecified) => parse_pull(legacy),
        Err(_) => Err(RequestError::Pull(format!(
            "{typed} (BuildSpec.pull_policy)"
        ))),
    }
}

pub(super) fn compression_message(c: LayerCompression) -> pb::LayerCompression {
    let kind = match c.kind {
        Kind::Gzip => pb::layer_compression::Kind::Gzip,
        Kind::Estargz => pb::layer_compression::Kind::Estargz,
        Kind::Zstd => pb::layer_compression::Kind::Zstd,
        Kind::Uncompressed => pb::layer_compression::Kind::Uncompressed,
    };
    pb::LayerCompression {
        kind: kind as i32,
        level: Some(c.level),
        force: c.force,
    }
}

pub(super) fn compression(c: &pb::LayerCompression) -> Result<LayerCompression> {
    use pb::layer_compression::Kind as K;
    let kind = match K::try_from(c.kind) {
        Ok(K::Unspecified | K::Gzip) => Kind::Gzip,
        Ok(K::Estargz) => Kind::Estargz,
        Ok(K::Zstd) => Kind::Zstd,
        Ok(K::Uncompressed) => Kind::Uncompressed,
        Err(_) => {
            return Err(RequestError::Output(format!(
                "--output compression: {} is not a compression (BuildSpec.image_output.compression.kind)",
                c.kind
            )));
        }
    };
    let of = LayerCompression {
        force: c.force,
        ..LayerCompression::of(kind)
    };
    match c.level {
        None => Ok(of),
        Some(level) => of.with_level(level).ok_or_else(|| {
            RequestError::Output(format!(
                "--output compression-level={level}: compression-level is 1-9 for gzip and estargz, 1-22 for zstd"
            ))
        }),
    }
}

fn media_types_message(t: MediaTypes) -> pb::MediaTypes {
    match t {
        MediaTypes::Oci => pb::MediaTypes::Oci,
        MediaTypes::Docker => pb::MediaTypes::Docker,
    }
}

fn media_types(value: i32) -> Result<MediaTypes> {
    match pb::MediaTypes::try_from(value) {
        Ok(pb::MediaTypes::Unspecified | pb::MediaTypes::Oci) => Ok(MediaTypes::Oci),
        Ok(pb::MediaTypes::Docker) => Ok(MediaTypes::Docker),
        Err(_) => Err(RequestError::Output(format!(
            "--output oci-mediatypes: {value} is not a choice of media types (BuildSpec.image_output.media_types)"
        ))),
    }
}

/// The typed `type=image` output, else what the legacy `-o` strings say
/// of it (their file outputs are the client's).
fn image_output(spec: &pb::BuildSpec) -> Result<Outputs> {
    let Some(image) = &spec.image_output else {
        let mut outputs = Outputs::parse(&spec.outputs, !spec.tags.is_empty())?;
        outputs.files.clear();
        return Ok(outputs);
    };
    Ok(Outputs {
        files: Vec::new(),
        names: normalize_names("--output name=", &image.names)?,
        push: image.push,
        compression: image
            .compression
            .as_ref()
            .map_or(Ok(LayerCompression::default()), compression)?
            .with_media_types(media_types(image.media_types)?)
            .map_err(RequestError::Output)?,
        // Carried in `BuildSpec.annotations`.
        annotations: Default::default(),
        // The client drops the names of a cache-only build itself.
        untagged: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::request::parse_cache;
    use kiln_registry::cache::Direction;

    /// A request goes over the wire and comes back the same (less what is
    /// the client's: file outputs, agent sockets).
    #[test]
    fn a_request_round_trips() {
        let request = Request {
            dockerfile: "FROM scratch\n".into(),
            tags: vec!["docker.io/library/a:1".into()],
            labels: [("k".to_owned(), "v".to_owned())].into(),
            pull: PullPolicy::Never,
            network: Network::None,
            sandbox: SandboxOptions::from_flags(
                &["h:::1".into(), "g=10.0.0.1".into()],
                &["nofile=10:20".into()],
                Some("1m"),
            )
            .unwrap(),
            compression: LayerCompression::parse("gzip")
                .unwrap()
                .with_level(9)
                .unwrap()
                .with_media_types(MediaTypes::Docker)
                .unwrap(),
            push: true,
            cache_imports: vec![
                parse_cache("--cache-from", Direction::Import, "r/c:1", &|_| None).unwrap(),
            ],
            cache_exports: vec![
                parse_cache(
                    "--cache-to",
                    Direction::Export,
                    "type=registry,ref=r/c:1,cache-mounts=true,mode=max",
                    &|_| None,
                )
                .unwrap(),
            ],
            registry: kiln_registry::Options {
                insecure: vec!["0.0.0.0:5000".into()],
                ..Default::default()
            },
            ..Request::default()
        };
        let back = Request::try_from(pb::BuildSpec::from(&request)).unwrap();
        assert_eq!(back.tags, request.tags);
        assert_eq!(back.labels, request.labels);
        assert_eq!(back.pull, request.pull);
        assert_eq!(back.network, request.network);
        assert_eq!(back.sandbox, request.sandbox);
        assert_eq!(back.compression, request.compression);
        assert!(back.push);
        assert_eq!(back.cache_imports, request.cache_imports);
        assert_eq!(back.cache_exports, request.cache_exports);
        assert_eq!(back.registry.insecure, request.registry.insecure);
    }

    /// Old clients' strings are read, with the CLI's messages.
    #[test]
    fn legacy_strings_are_read_and_checked() {
        let spec = pb::BuildSpec {
            pull: "always".into(),
            cache_from: vec!["type=registry,ref=r/c:1".into()],
            outputs: vec!["type=image,push=true,compression=zstd".into()],
            tags: vec!["a:1".into()],
            ..Default::default()
        };
        let r = Request::try_from(spec).unwrap();
        assert_eq!(r.pull, PullPolicy::Always);
        assert_eq!(r.cache_imports[0].name(), "r/c:1");
        assert!(r.push);
        assert_eq!(r.compression.kind, Kind::Zstd);
        let bad = pb::BuildSpec {
            pull: "sometimes".into(),
            ..Default::default()
        };
        assert_eq!(
            Request::try_from(bad).unwrap_err().to_string(),
            "--pull=sometimes: expected missing, always or never (or true, false)"
        );
        let hostile = pb::BuildSpec {
            pull_policy: 99,
            ..Default::default()
        };
        assert!(Request::try_from(hostile).is_err());
        let no_key = pb::BuildSpec {
            labels: [(String::new(), "v".to_owned())].into(),
            ..Default::default()
        };
        assert!(Request::try_from(no_key).is_err());
    }

    /// A hostile client's lists are bounded as the CLI's flags are, in
    /// the typed fields and the legacy strings alike.
    #[test]
    fn a_clients_lists_are_bounded() {
        let over = crate::pipeline::request::MAX_LIST_ENTRIES + 1;
        let cache = pb::CacheRef {
            r#ref: "r/c:1".into(),
            ..Default::default()
        };
        let specs = [
            pb::BuildSpec {
                cache_imports: vec![cache.clone(); over],
                ..Default::default()
            },
            pb::BuildSpec {
                cache_from: vec!["type=registry,ref=r/c:1".into(); over],
                ..Default::default()
            },
            pb::BuildSpec {
                cache_exports: vec![cache; over],
                ..Default::default()
            },
            pb::BuildSpec {
                registry: Some(pb::RegistryOptions {
                    insecure: vec!["registry.lan:5000".into(); over],
                }),
                ..Default::default()
            },
        ];
        for (spec, flag) in specs.into_iter().zip([
            "--cache-from",
            "--cache-from",
            "--cache-to",
            "--insecure-registry",
        ]) {
            let error = Request::try_from(spec).unwrap_err();
            assert!(
                matches!(error, RequestError::TooMany { flag: f, count } if f == flag && count == over),
                "{flag}: {error}"
            );
        }
    }
}
