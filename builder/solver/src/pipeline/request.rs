//! The typed build request: everything one build takes, less its context
//! directory. The CLI's flags and kilnd's wire message (`BuildSpec`, see
//! [`super::wire`]) both become this type through the same checks, so a
//! bad value gets the same message embedded and through kilnd.
//!
//! Adding a build option: a field here, its flag in the CLI
//! (`builder/src/bin/kiln/build.rs`), its wire field (`control.proto`,
//! [`super::wire`]) and its use in [`super::run`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_proto::ops::v1::Platform;
use kiln_proto::sandbox::SandboxOptions;
use kiln_worker::sandbox::spec::Network;
use thiserror::Error;

use crate::entitlements::{EntitlementError, Entitlements};
use kiln_image::compress::LayerCompression;
use kiln_image::image::annotations::{Annotation, Annotations, MAX_ANNOTATION_BYTES};
use kiln_image::output::Output;
use kiln_registry::PullPolicy;

/// Why a request is refused; each message names the flag (or, for a
/// typed wire field no flag fills, the field).
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("--pull={0}: expected missing, always or never (or true, false)")]
    Pull(String),
    /// A flag's value is malformed.
    #[error("{flag} {value}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// An image name (`-t`, `--output name=`) is not one.
    #[error("{flag}: {source}")]
    Name {
        flag: &'static str,
        source: kiln_image::image::ImageError,
    },
    #[error(transparent)]
    Sandbox(#[from] kiln_proto::sandbox::SandboxOptionError),
    #[error(transparent)]
    Entitlement(#[from] EntitlementError),
    #[error("{0}")]
    Output(String),
    /// Annotations over [`MAX_ANNOTATION_BYTES`].
    #[error(
        "--annotation: the annotations hold {0} bytes, over kiln's bound of {MAX_ANNOTATION_BYTES}"
    )]
    AnnotationsTooLarge(usize),
    /// `--label`s over [`MAX_LABEL_BYTES`].
    #[error("--label: the labels hold {0} bytes, over kiln's bound of {MAX_LABEL_BYTES}")]
    LabelsTooLarge(usize),
    /// A list of registries over [`MAX_LIST_ENTRIES`].
    #[error("{flag}: {count} given, over kiln's bound of {MAX_LIST_ENTRIES}")]
    TooMany { flag: &'static str, count: usize },
}

/// The bytes all `--label` keys and values may hold together: they go into
/// the image config, which a reader takes only up to 4 MiB
/// (`kiln_image::image::MAX_METADATA`), beside the Dockerfile's own.
pub const MAX_LABEL_BYTES: usize = 1 << 20;

/// The entries each list of registries a request names may hold:
/// `--cache-from`, `--cache-to`, `--insecure-registry` (and a pull's or
/// push's); and the named contexts of `--build-context`. Each entry is a registry the build reaches or a host looked up
/// on every registry call; a build needs a handful, and a kilnd client
/// must not make one build reach thousands.
pub const MAX_LIST_ENTRIES: usize = 64;

type Result<T> = std::result::Result<T, RequestError>;

/// A build cache outside the store (`--cache-from`, `--cache-to`): its
/// backend (registry, local directory, inline, S3) and export settings.
pub use kiln_registry::cache::CacheSpec as CacheRef;
use kiln_registry::cache::Direction;

/// A `--cache-from` (`Direction::Import`) or `--cache-to` value, parsed
/// as buildx parses it; `flag` names the option in the error. S3
/// settings left unset come from `env` (the CLI's environment: the AWS
/// variables), never from kilnd's.
pub fn parse_cache(
    flag: &'static str,
    direction: Direction,
    spec: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CacheRef> {
    let mut cache = CacheRef::parse(flag, direction, spec).map_err(RequestError::Output)?;
    if let kiln_registry::cache::Backend::S3(s3) = &mut cache.backend {
        s3.from_env(env);
    }
    Ok(cache)
}

/// What one build takes: the Dockerfile and its settings, where the result
/// goes, and how registries are reached. The context directory is not in
/// it: embedded it is a path, through kilnd a stream.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// `.dockerignore` patterns, as written.
    pub dockerignore: Vec<String>,
    /// `--build-arg`s (with `SOURCE_DATE_EPOCH` from the environment).
    pub build_args: BTreeMap<String, String>,
    /// `--target`; `None`: the last stage.
    pub target: Option<String>,
    /// `--platform`: the platforms to build for, each once, in order;
    /// none: the host's.
    pub platforms: Vec<Platform>,
    /// Full names to tag: `-t` and `--output type=image,name=`, normalized.
    pub tags: Vec<String>,
    /// `--label`: set on the image over the Dockerfile's `LABEL`s.
    pub labels: BTreeMap<String, String>,
    /// `--annotation` and `-o annotation*.K=V`: on the manifests, the
    /// index and its entries.
    pub annotations: Annotations,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`: stages whose steps run again.
    pub no_cache_filter: Vec<String>,
    /// `--pull`.
    pub pull: PullPolicy,
    /// `--network`: RUN steps that do not ask for one.
    pub network: Network,
    /// `--add-host`, `--ulimit`, `--shm-size`.
    pub sandbox: SandboxOptions,
    /// `--allow` (and `network.host` for `--network=host`): what the build
    /// asks for; kilnd grants within what it allows.
    pub entitlements: Entitlements,
    /// `--output compression=…,compression-level=…`.
    pub compression: LayerCompression,
    /// The file outputs (`type=docker|oci|tar|local`).
    pub files: Vec<Output>,
    /// Through kilnd: the client writes an OCI output (its `files` stay
    /// with it), so the image is made as it leaves, as for one here.
    pub oci_elsewhere: bool,
    /// `--output type=image,push=true`: push every tag after the build.
    pub push: bool,
    /// `--cache-from`.
    pub cache_imports: Vec<CacheRef>,
    /// `--cache-to`.
    pub cache_exports: Vec<CacheRef>,
    /// `--insecure-registry`: for pulls, caches and pushes alike.
    pub registry: kiln_registry::Options,
    /// `--secret`: by id. Never logged.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// `--ssh`: agents by id, and their sockets on the machine that runs
    /// the build (through kilnd, its relays of the client's agents).
    pub ssh: BTreeMap<String, PathBuf>,
    /// When a fetched context (Git, HTTP) last changed:
    /// `SOURCE_DATE_EPOCH=context`.
    pub context_time: Option<u64>,
    /// `--build-context`s by normalized name, made ready by the client (a
    /// URL fetched into a directory, a directory's `.dockerignore` read);
    /// through kilnd, their directories are kilnd's copies.
    pub named_contexts: BTreeMap<String, super::contexts::NamedContext>,
}

/// `--pull`'s value (buildx's boolean forms too).
pub fn parse_pull(text: &str) -> Result<PullPolicy> {
    PullPolicy::parse(text).ok_or_else(|| RequestError::Pull(text.to_owned()))
}

/// `--label KEY=VALUE`, or `KEY` for an empty value (as buildx).
pub fn parse_label(spec: &str) -> Result<(String, String)> {
    let (key, value) = spec.split_once('=').unwrap_or((spec, ""));
    check_label_key(key, spec)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Labels as a build takes them: each key named, all of them within
/// [`MAX_LABEL_BYTES`] (from a command line or a kilnd client alike).
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for key in labels.keys() {
        check_label_key(key, key)?;
    }
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_LABEL_BYTES {
        return Err(RequestError::LabelsTooLarge(bytes));
    }
    Ok(())
}

/// `--annotation` values, each buildx's `[TYPE[PLATFORM]:]KEY=VALUE`.
pub fn parse_annotations(specs: &[String]) -> Result<Annotations> {
    let mut all = Vec::new();
    for spec in specs {
        all.extend(
            Annotation::parse_flag(spec).map_err(|reason| RequestError::Invalid {
                flag: "--annotation",
                value: spec.clone(),
                reason,
            })?,
        );
    }
    Ok(Annotations(all))
}

/// Annotations as a build takes them: within [`MAX_ANNOTATION_BYTES`], an
/// index's only for several platforms (only they make one), and in OCI
/// media types (Docker's manifests have no annotations).
pub fn check_annotations(request: &Request) -> Result<()> {
    let annotations = &request.annotations;
    if annotations.is_empty() {
        return Ok(());
    }
    if annotations.bytes() > MAX_ANNOTATION_BYTES {
        return Err(RequestError::AnnotationsTooLarge(annotations.bytes()));
    }
    if annotations.need_index() && request.platforms.len() < 2 {
        return Err(RequestError::Output(
            "--annotation: index and manifest-descriptor annotations need an index: \
             build for several platforms (--platform)"
                .to_owned(),
        ));
    }
    if request.compression.media_types == kiln_image::image::MediaTypes::Docker {
        return Err(RequestError::Output(
            "--annotation needs OCI media types: Docker's manifests have no annotations \
             (drop oci-mediatypes=false)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// A list given with `flag` holds at most [`MAX_LIST_ENTRIES`].
pub fn check_count(flag: &'static str, count: usize) -> Result<()> {
    if count > MAX_LIST_ENTRIES {
        return Err(RequestError::TooMany { flag, count });
    }
    Ok(())
}

/// A request's lists of registries within [`MAX_LIST_ENTRIES`] each (from
/// a command line or a kilnd client alike).
pub fn check_lists(request: &Request) -> Result<()> {
    check_count("--platform", request.platforms.len())?;
    check_count("--cache-from", request.cache_imports.len())?;
    check_count("--cache-to", request.cache_exports.len())?;
    check_count("--insecure-registry", request.registry.insecure.len())?;
    super::contexts::check(&request.named_contexts)
}

/// `--platform` values (each a list: `linux/amd64,linux/arm64`), parsed
/// and normalized, each platform once in the order first given.
pub fn parse_platforms(values: &[String]) -> Result<Vec<Platform>> {
    let mut platforms: Vec<Platform> = Vec::new();
    for text in values.iter().flat_map(|v| v.split(',')) {
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let platform = kiln_frontend::platform::parse(text).map_err(|e| RequestError::Invalid {
            flag: "--platform",
            value: text.to_owned(),
            reason: e.to_string(),
        })?;
        if !platforms.contains(&platform) {
            platforms.push(platform);
        }
        check_count("--platform", platforms.len())?;
    }
    Ok(platforms)
}

/// An output that holds one image refuses a build for several platforms,
/// as BuildKit's docker exporter does.
pub fn check_outputs_for_platforms(request: &Request) -> Result<()> {
    if request.platforms.len() < 2 {
        return Ok(());
    }
    let docker = request.files.iter().any(|o| matches!(o, Output::Docker(_)));
    if docker {
        return Err(RequestError::Output(
            "docker exporter does not currently support exporting manifest lists: \
             -o type=docker takes one platform (use type=oci, or one --platform)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Whether `files` hold an OCI output (one made from the image as it
/// leaves, its layers compressed as asked).
pub fn has_oci(files: &[Output]) -> bool {
    files.iter().any(|o| matches!(o, Output::Oci(_)))
}

/// A label key is not empty (the image config could hold one, but no
/// tool reads it back).
pub(super) fn check_label_key(key: &str, spec: &str) -> Result<()> {
    if key.is_empty() {
        return Err(RequestError::Invalid {
            flag: "--label",
            value: spec.to_owned(),
            reason: "expected KEY=VALUE".to_owned(),
        });
    }
    Ok(())
}

/// Names (`-t`, `name=`) normalized to full ones.
pub fn normalize_names(flag: &'static str, names: &[String]) -> Result<Vec<String>> {
    names
        .iter()
        .map(|n| {
            kiln_image::image::normalize(n).map_err(|source| RequestError::Name { flag, source })
        })
        .collect()
}

/// The `--output` values: the file outputs, the `type=image` names and
/// whether to push, and the layers' compression. Push needs a name
/// (`tagged`: whether `-t` gave one).
pub struct Outputs {
    pub files: Vec<Output>,
    pub names: Vec<String>,
    pub push: bool,
    pub compression: LayerCompression,
    /// `annotation*.K=V` attributes of any output.
    pub annotations: Annotations,
    /// `type=cacheonly` and no image output: the build tags nothing (its
    /// `-t` names are dropped), as BuildKit's cacheonly exporter makes no
    /// image.
    pub untagged: bool,
}

impl Outputs {
    pub fn parse(specs: &[String], tagged: bool) -> Result<Self> {
        let mut outputs = Self {
            files: Vec::new(),
            names: Vec::new(),
            push: false,
            compression: LayerCompression::from_outputs(specs).map_err(RequestError::Output)?,
            annotations: Annotations::default(),
            untagged: false,
        };
        for spec in specs {
            for field in spec.split(',') {
                if let Some(parsed) = Annotation::parse_attribute(field) {
                    outputs
                        .annotations
                        .0
                        .push(parsed.map_err(|reason| RequestError::Invalid {
                            flag: "--output",
                            value: spec.clone(),
                            reason,
                        })?);
                }
            }
        }
        let (mut image, mut cache_only) = (false, false);
        for spec in specs {
            match Output::parse(spec).map_err(RequestError::Output)? {
                Output::Image { names, push } => {
                    outputs.names.extend(names);
                    outputs.push |= push;
                    image = true;
                }
                Output::CacheOnly => cache_only = true,
                file => outputs.files.push(file),
            }
        }
        outputs.untagged = cache_only && !image;
        outputs.names = normalize_names("--output name=", &outputs.names)?;
        check_push(outputs.push, tagged || !outputs.names.is_empty())?;
        Ok(outputs)
    }
}

/// A push needs a name to push to.
pub(super) fn check_push(push: bool, named: bool) -> Result<()> {
    if push && !named {
        return Err(RequestError::Output(
            "--output push=true needs a name (name= or -t)".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        let big = BTreeMap::from([("k".to_owned(), "v".repeat(MAX_LABEL_BYTES))]);
        assert_eq!(
            check_labels(&big).unwrap_err().to_string(),
            format!(
                "--label: the labels hold {} bytes, over kiln's bound of {MAX_LABEL_BYTES}",
                MAX_LABEL_BYTES + 1
            )
        );
        let small = BTreeMap::from([("k".to_owned(), "v".repeat(MAX_LABEL_BYTES - 1))]);
        assert!(check_labels(&small).is_ok());
    }

    /// Annotations from a command line or a kilnd client alike: within
    /// their bound, an index's only with an index, never in Docker types.
    #[test]
    fn annotations_are_checked() {
        let big = parse_annotations(&[format!("k={}", "v".repeat(MAX_ANNOTATION_BYTES))]).unwrap();
        let request = Request {
            annotations: big,
            ..Request::default()
        };
        assert_eq!(
            check_annotations(&request).unwrap_err().to_string(),
            format!(
                "--annotation: the annotations hold {} bytes, over kiln's bound of {MAX_ANNOTATION_BYTES}",
                MAX_ANNOTATION_BYTES + 1
            )
        );
        let index = Request {
            annotations: parse_annotations(&["index:k=v".to_owned()]).unwrap(),
            ..Request::default()
        };
        assert!(
            check_annotations(&index)
                .unwrap_err()
                .to_string()
                .contains("need an index")
        );
        assert!(parse_annotations(&["bogus:k=v".to_owned()]).is_err());
    }

    #[test]
    fn lists_are_bounded() {
        let cache = parse_cache("--cache-from", Direction::Import, "r/c:1", &|_| None).unwrap();
        let host = "registry.lan:5000".to_owned();
        let at_bound = Request {
            cache_imports: vec![cache.clone(); MAX_LIST_ENTRIES],
            cache_exports: vec![cache.clone(); MAX_LIST_ENTRIES],
            registry: kiln_registry::Options {
                insecure: vec![host.clone(); MAX_LIST_ENTRIES],
                ..Default::default()
            },
            ..Request::default()
        };
        assert!(check_lists(&at_bound).is_ok());
        let over = |mut r: Request, which: &str| {
            match which {
                "--cache-from" => r.cache_imports.push(cache.clone()),
                "--cache-to" => r.cache_exports.push(cache.clone()),
                _ => r.registry.insecure.push(host.clone()),
            }
            check_lists(&r).unwrap_err().to_string()
        };
        for flag in ["--cache-from", "--cache-to", "--insecure-registry"] {
            assert_eq!(
                over(at_bound.clone(), flag),
                format!(
                    "{flag}: {} given, over kiln's bound of {MAX_LIST_ENTRIES}",
                    MAX_LIST_ENTRIES + 1
                )
            );
        }
    }

    #[test]
    fn labels_need_a_key() {
        assert_eq!(
            parse_label("a=b=c").unwrap(),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert_eq!(parse_label("a").unwrap(), ("a".to_owned(), String::new()));
        assert_eq!(
            parse_label("=x").unwrap_err().to_string(),
            "--label =x: expected KEY=VALUE"
        );
    }

    #[test]
    fn a_bad_pull_names_the_flag() {
        assert_eq!(
            parse_pull("sometimes").unwrap_err().to_string(),
            "--pull=sometimes: expected missing, always or never (or true, false)"
        );
    }

    /// buildx's shorthands: `type=registry` pushes, `type=docker` without
    /// `dest` loads (into the store), `type=cacheonly` alone tags nothing.
    #[test]
    fn shorthand_outputs() {
        let parse = |specs: &[&str]| {
            let specs: Vec<String> = specs.iter().map(|s| (*s).to_owned()).collect();
            Outputs::parse(&specs, true).unwrap()
        };
        let registry = parse(&["type=registry"]);
        assert!(registry.push && registry.files.is_empty() && !registry.untagged);
        let load = parse(&["type=docker"]);
        assert!(!load.push && load.files.is_empty() && !load.untagged);
        assert!(parse(&["type=cacheonly"]).untagged);
        assert!(!parse(&["type=cacheonly", "type=docker"]).untagged);
        let both = parse(&["type=registry", "type=docker,dest=a.tar"]);
        assert!(both.push && both.files.len() == 1);
    }

    #[test]
    fn push_needs_a_name() {
        let specs = ["type=image,push=true".to_owned()];
        assert!(Outputs::parse(&specs, false).is_err());
        assert!(Outputs::parse(&specs, true).unwrap().push);
    }

    /// `oci-mediatypes=false` on the image and OCI outputs alike; never
    /// with zstd.
    #[test]
    fn outputs_choose_docker_media_types() {
        use kiln_image::image::MediaTypes;
        let specs = [
            "type=image,push=true,oci-mediatypes=false".to_owned(),
            "type=oci,dest=o.tar,oci-mediatypes=false".to_owned(),
        ];
        let outputs = Outputs::parse(&specs, true).unwrap();
        assert_eq!(outputs.compression.media_types, MediaTypes::Docker);
        assert_eq!(outputs.files.len(), 1);
        let zstd = ["type=image,push=true,compression=zstd,oci-mediatypes=false".to_owned()];
        let Err(RequestError::Output(e)) = Outputs::parse(&zstd, true) else {
            panic!("zstd in Docker media types was taken");
        };
        assert!(e.contains("zstd needs OCI media types"), "{e}");
    }
}
