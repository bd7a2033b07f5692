//! `kiln build`: docker-build habits, no daemon.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use kiln_builder::client::ClientError;
use kiln_cache::Store;
use kiln_proto::sandbox::SandboxOptions;
use kiln_registry::cache::Direction;
use kiln_solver::build::{BuildError, BuildRequest};
use kiln_solver::context::remote::{ContextArg, RemoteContext, fetch_context, fetch_named_context};
use kiln_solver::context::{DockerfileSource, StdinContext, dir_dockerignore, read_stdin_context};
use kiln_solver::entitlements::{Entitlement, Entitlements};
use kiln_solver::pipeline::NamedContext;
use kiln_solver::pipeline::contexts::ContextValue;
use kiln_solver::pipeline::request::parse_cache;
use kiln_solver::pipeline::request::{
    check_annotations, check_labels, check_lists, check_outputs_for_platforms, normalize_names,
    parse_annotations, parse_label, parse_platforms, parse_pull,
};
use kiln_solver::pipeline::{self, Env, Metadata, Outputs, PipelineError, Request};
use kiln_solver::solve::SolveError;
use kiln_worker::sandbox::spec::Network;

use crate::progress::{Mode, Printer};

#[derive(Args)]
pub(crate) struct Build {
    /// The Dockerfile (`-` for standard input); default: CONTEXT/Dockerfile.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name the image (several allowed).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Set an image label (`KEY=VALUE`, repeated), over the Dockerfile's
    /// `LABEL` of the same key.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Add an OCI annotation: `[TYPE[PLATFORM]:]KEY=VALUE`, TYPE `manifest`
    /// (the default), `index` or `manifest-descriptor` (several platforms),
    /// e.g. `index:org.opencontainers.image.title=app`; as buildx.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// Set a build argument (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// The stage to build; default: the last one.
    #[arg(long)]
    target: Option<String>,
    /// An additional build context (repeated): `FROM NAME`, `COPY
    /// --from=NAME` and `RUN --mount=from=NAME` read it before a stage or
    /// an image of that name, and a stage named NAME is replaced by it.
    /// VALUE: a directory (its own `.dockerignore` applies; in `FROM`, its
    /// files are the root filesystem), `docker-image://REF` (pulled as
    /// `--pull` says), `oci-layout://DIR[:TAG]` or
    /// `oci-layout://DIR@sha256:…` (an OCI image layout, digests checked),
    /// a Git repository (`https://host/repo.git#REF:DIR`, `git@host:repo`),
    /// an HTTP(S) URL (a directory holding the one file `context`), or
    /// `target:STAGE` (this Dockerfile's stage STAGE under the name).
    /// NAME is an image reference (`alpine`, `alpine:3.19`, `builder`);
    /// through kilnd, a directory is sent as the context is, only what
    /// changed.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
    /// The platforms to build for (`os/arch[/variant]`, a comma-separated
    /// list or repeated): several make one image index; default: this
    /// machine's. Foreign platforms' RUN steps run under emulation (`kiln
    /// debug platforms`).
    #[arg(long = "platform", value_name = "PLATFORM")]
    platforms: Vec<String>,
    /// Run every step, using no cached result.
    #[arg(long)]
    no_cache: bool,
    /// Run the steps of these stages again (a comma-separated list, or repeated).
    #[arg(long, value_delimiter = ',', value_name = "STAGE")]
    no_cache_filter: Vec<String>,
    /// A secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR`.
    #[arg(long = "secret", value_name = "id=ID,src=FILE")]
    secrets: Vec<String>,
    /// Export the build cache, as `docker buildx build --cache-to`:
    /// `type=registry,ref=REF`, `type=local,dest=DIR[,tag=T][,reset=true]`,
    /// `type=inline` (in the image config; also `--build-arg
    /// BUILDKIT_INLINE_CACHE=1`), or `type=s3,bucket=B,region=R
    /// [,endpoint_url=URL,use_path_style=true,prefix=P,name=N1;N2,
    /// blobs_prefix=P,manifests_prefix=P,access_key_id=…,secret_access_key=…,
    /// session_token=…]` (unset: `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN` of this machine).
    /// Any type takes `mode=min|max` (min, the default: the image's own
    /// steps; max: every stage's), `ignore-error=true` (a failed export is
    /// a warning), `compression=gzip|zstd|uncompressed`,
    /// `compression-level=N` and kiln's `cache-mounts=true` (the build's
    /// `RUN --mount=type=cache` contents go along). Taken and ignored:
    /// `oci-mediatypes`, `image-manifest`, `force-compression`,
    /// `touch_refresh`, `upload_parallelism`, `registry.insecure`.
    #[arg(long = "cache-to", value_name = "type=TYPE,…")]
    cache_to: Vec<String>,
    /// Import a build cache: `REF` (a registry cache, or an image pushed
    /// with inline cache), `type=registry,ref=REF`,
    /// `type=local,src=DIR[,tag=T|digest=sha256:…]`, `type=s3,bucket=B,…`
    /// (as --cache-to). A cache that cannot be imported is a warning.
    #[arg(long = "cache-from", value_name = "REF|type=TYPE,…")]
    cache_from: Vec<String>,
    /// Pull every base image (`--pull`, a switch as in `docker buildx
    /// build`), or say when: `--pull=missing` (the default), `always`, `never`.
    #[arg(
        long,
        value_name = "POLICY",
        default_value = "missing",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "always"
    )]
    pull: String,
    #[command(flatten)]
    registry: crate::registry::RegistryArgs,
    /// An SSH agent for `RUN --mount=type=ssh`: `default` (`$SSH_AUTH_SOCK`)
    /// or `ID=SOCKET`.
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    ssh: Vec<String>,
    /// The network of RUN steps that do not ask for one: default (a namespace
    /// of the step's own with outbound access through a NAT, never the host's
    /// loopback), none (only loopback), host (the host's; asks for the
    /// network.host entitlement).
    #[arg(long, value_enum, default_value_t = NetworkFlag::Default)]
    network: NetworkFlag,
    /// An extra /etc/hosts line in every RUN step: `HOST:IP` or `HOST=IP`
    /// (repeated; IPv6 plain or in brackets). `host-gateway` is refused:
    /// steps have no gateway to the host. (The step's own hostname is the
    /// `BUILDKIT_SANDBOX_HOSTNAME` build arg; default `kiln`.)
    #[arg(long = "add-host", value_name = "HOST:IP")]
    add_hosts: Vec<String>,
    /// A resource limit of every RUN step: `NAME=SOFT[:HARD]` (repeated;
    /// docker's names: core, cpu, data, fsize, locks, memlock, msgqueue,
    /// nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack; -1 is
    /// unlimited); e.g. `nofile=1024:2048`.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<String>,
    /// The size of every RUN step's /dev/shm: bytes, or with a unit (`64m`,
    /// `1g`); default 64m; at most the memory of the machine the step runs on.
    #[arg(long = "shm-size", value_name = "SIZE")]
    shm_size: Option<String>,
    /// Grant the build an entitlement: `network.host` (`RUN --network=host`),
    /// `security.insecure` (`RUN --security=insecure`). A comma-separated
    /// list, or repeated; through kilnd, only what kilnd allows.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// How progress is shown: auto (tty on a terminal, else plain), tty,
    /// plain, json (kiln's events), rawjson (BuildKit's SolveStatus, as
    /// buildx), quiet or none (only warnings and errors).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    progress: Mode,
    /// Where the result goes, buildctl's syntax: `type=image` (the store; the
    /// default; `push=true` pushes its names), `type=registry` (pushed:
    /// `--push`), `type=docker` (without `dest=`, into the store:
    /// `--load`), `type=docker,dest=F`, `type=oci,dest=F`,
    /// `type=oci,dest=DIR,tar=false` (the layout in a directory),
    /// `type=local,dest=DIR`, `type=tar,dest=F`, `type=cacheonly` (only
    /// `--cache-to`; nothing tagged), or a directory; `dest=-` (or `-o -`, a
    /// tar) is standard output. `compression=gzip|estargz|zstd|uncompressed`
    /// (and `compression-level=N`): how layers leave with `push=true`,
    /// `type=oci` and `--cache-to` (gzip by default; estargz: gzip that
    /// runtimes can pull lazily); the store keeps a build's own layers
    /// uncompressed, and a base image's leave as they came unless
    /// `force-compression=true`. `oci-mediatypes=false`: the push and
    /// `type=oci` in Docker schema 2 media types (OCI's by default; not with
    /// zstd nor estargz). `annotation.K=V` (and `annotation-index.`,
    /// `annotation-manifest.`, `annotation-manifest-descriptor.`): as
    /// `--annotation`.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Push the image to its names' registries: `--output type=registry`.
    #[arg(long)]
    push: bool,
    /// Keep the image in kiln's store (docker's `--load`: `--output
    /// type=docker`, which without `dest=` loads into the store).
    #[arg(long)]
    load: bool,
    /// Write the build's result as JSON to FILE, with buildx's keys:
    /// `containerimage.digest`, `containerimage.config.digest` (one
    /// platform), `containerimage.descriptor`, `image.name`,
    /// `buildx.build.ref`.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Write the image ID to FILE (the config's digest; for several
    /// platforms, the index's).
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Print only the image ID.
    #[arg(short, long)]
    quiet: bool,
    /// Run the build checks and build nothing (`--call=check`): each
    /// warning with its rule, URL and lines, as `docker buildx build
    /// --check`; exit status 1 when there is any.
    #[arg(long)]
    check: bool,
    /// What the build does: `build` (the default) or `check` (`--check`).
    #[arg(long, value_enum, default_value_t = Call::Build, value_name = "build|check")]
    call: Call,
    #[command(flatten)]
    buildx: crate::buildx_flags::BuildxFlags,
    /// The build context: a directory; `-` for standard input (a tar of it,
    /// plain, gzip, bzip2, xz or zstd, or a lone Dockerfile and no
    /// context); a Git repository (`https://host/repo.git#REF:DIR`,
    /// `git@host:repo.git`, `?ref=…&subdir=…`); or an HTTP(S) URL of a
    /// context archive or of a lone Dockerfile. With a URL, `-f` is a path
    /// inside the context.
    context: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Call {
    Build,
    Check,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetworkFlag {
    Default,
    None,
    Host,
}

/// At most one output on standard output, never a terminal (buildx's
/// rules), and not beside `-q`'s image ID.
fn check_stdout(files: &[kiln_image::output::Output], quiet: bool) -> Result<()> {
    let mut to_stdout = files.iter().filter(|o| o.to_stdout());
    let Some(first) = to_stdout.next() else {
        return Ok(());
    };
    anyhow::ensure!(
        to_stdout.next().is_none(),
        "multiple outputs configured to write to stdout"
    );
    anyhow::ensure!(
        !std::io::IsTerminal::is_terminal(&std::io::stdout()),
        "dest file is required for {} exporter. refusing to write to console",
        first.kind()
    );
    anyhow::ensure!(
        !quiet,
        "--quiet prints the image ID on standard output, where the {} output goes",
        first.kind()
    );
    Ok(())
}

/// `ID[=SOCKET]` of `--ssh`: the agent's socket (default `$SSH_AUTH_SOCK`).
fn ssh_agent(spec: &str) -> Result<(String, PathBuf)> {
    let (id, socket) = match spec.split_once('=') {
        Some((id, socket)) => (id, PathBuf::from(socket)),
        None => (
            spec,
            std::env::var_os("SSH_AUTH_SOCK")
                .map(PathBuf::from)
                .with_context(|| format!("--ssh {spec}: $SSH_AUTH_SOCK is not set"))?,
        ),
    };
    anyhow::ensure!(!id.is_empty(), "--ssh {spec}: no id");
    let kind = std::fs::metadata(&socket)
        .with_context(|| format!("--ssh {spec}: {}", socket.display()))?
        .file_type();
    anyhow::ensure!(
        std::os::unix::fs::FileTypeExt::is_socket(&kind),
        "--ssh {spec}: {} is not an agent socket (kiln forwards agents; for a key file, `ssh-add` it to an agent)",
        socket.display()
    );
    Ok((id.to_owned(), socket))
}

/// `id=ID,src=FILE` (or `source=`), or `id=ID,env=VAR`, as docker build takes them.
fn read_secret(spec: &str) -> Result<(String, Vec<u8>)> {
    let mut id = None;
    let mut value = None;
    for field in spec.split(',') {
        match field.split_once('=') {
            Some(("id", v)) => id = Some(v.to_owned()),
            Some(("src" | "source", path)) => {
                value = Some(
                    std::fs::read(path)
                        .with_context(|| format!("--secret {spec}: reading {path}"))?,
                );
            }
            Some(("env", var)) => {
                let v = std::env::var(var)
                    .with_context(|| format!("--secret {spec}: ${var} is not set"))?;
                value = Some(v.into_bytes());
            }
            Some(("type", "file" | "env")) => {}
            _ => anyhow::bail!("--secret {spec}: expected id=ID,src=FILE or id=ID,env=VAR"),
        }
    }
    let id = id.with_context(|| format!("--secret {spec}: no id="))?;
    let value = match value {
        Some(v) => v,
        // docker's shorthand: `--secret id=TOKEN` reads $TOKEN.
        None => std::env::var(&id)
            .with_context(|| format!("--secret {spec}: no src= and ${id} is not set"))?
            .into_bytes(),
    };
    Ok((id, value))
}

/// `bytes` in `path`: a file beside it, then renamed over it (no reader
/// sees half of it), 0666 less the umask as a file `docker` writes.
fn write_whole(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A directory removed when dropped (a context read from standard input).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The build context made ready to read: standard input unpacked or a URL
/// fetched into a scratch directory (kept while this lives), or a local
/// directory as it is.
struct Context {
    dir: PathBuf,
    source: DockerfileSource,
    /// The Dockerfile itself, when standard input or the URL was one.
    piped: Option<String>,
    /// When a fetched context last changed (`SOURCE_DATE_EPOCH=context`).
    time: Option<u64>,
    _scratch: Scratch,
}

/// What keeps a context's scratch directory until the build is done.
enum Scratch {
    None,
    Stdin { _dir: TempDir },
    Remote { _fetched: RemoteContext },
}

impl Context {
    /// The Dockerfile's text.
    fn dockerfile(&self) -> Result<String> {
        match &self.piped {
            Some(text) => Ok(text.clone()),
            None => Ok(self.source.read()?),
        }
    }

    fn dockerignore(&self) -> Result<Vec<String>> {
        Ok(self.source.dockerignore(&self.dir)?)
    }

    /// What the request takes from the context: the Dockerfile, the
    /// `.dockerignore`, when a fetched context last changed.
    fn fill(&self, request: &mut Request) -> Result<()> {
        request.dockerfile = self.dockerfile()?;
        request.dockerignore = self.dockerignore()?;
        request.context_time = self.time;
        Ok(())
    }
}

/// The `--build-context`s made ready: URLs fetched (kept while this
/// lives), directories checked and their `.dockerignore` read.
struct NamedContexts {
    contexts: std::collections::BTreeMap<String, NamedContext>,
    _fetched: Vec<RemoteContext>,
}

/// A directory a `--build-context` names, canonical (embedded, the solver
/// reads it by this path; through kilnd, the session is kept by it).
fn context_dir(name: &str, path: &std::path::Path) -> Result<PathBuf> {
    let dir = path
        .canonicalize()
        .with_context(|| format!("--build-context {name}={}", path.display()))?;
    anyhow::ensure!(
        dir.is_dir(),
        "--build-context {name}={}: not a directory",
        path.display()
    );
    Ok(dir)
}

impl Build {
    /// `--build-context`s: checked, and each made ready to read (a URL
    /// fetched into `tmp`).
    fn named_contexts(&self, tmp: &std::path::Path) -> Result<NamedContexts> {
        let values = kiln_solver::pipeline::contexts::parse_all(&self.build_contexts)?;
        let mut named = NamedContexts {
            contexts: Default::default(),
            _fetched: Vec::new(),
        };
        for (name, value) in values {
            let context = match value {
                ContextValue::Dir(path) => {
                    let path = context_dir(&name, &path)?;
                    let dockerignore = dir_dockerignore(&path)
                        .with_context(|| format!("--build-context {name}={}", path.display()))?;
                    NamedContext::Dir { path, dockerignore }
                }
                ContextValue::Image(reference) => NamedContext::Image(reference),
                ContextValue::Stage(stage) => NamedContext::Stage(stage),
                ContextValue::OciLayout { path, tag, digest } => NamedContext::OciLayout {
                    path: context_dir(&name, &path)?,
                    tag,
                    digest,
                },
                ContextValue::Git(url) | ContextValue::Url(url) => {
                    if !self.quiet {
                        eprintln!("fetching the build context {name} from {url}");
                    }
                    let fetched = fetch_named_context(&ContextArg::parse(url.as_ref()), tmp)
                        .with_context(|| format!("--build-context {name}={url}"))?;
                    let path = fetched.dir.clone();
                    named._fetched.push(fetched);
                    // BuildKit applies no `.dockerignore` to a Git or HTTP
                    // context.
                    NamedContext::Dir {
                        path,
                        dockerignore: Vec::new(),
                    }
                }
            };
            named.contexts.insert(name, context);
        }
        Ok(named)
    }

    /// `-` as the context: standard input holds a context archive, unpacked
    /// into `dir`, or (as docker takes it) a lone Dockerfile, returned, with
    /// an empty context.
    fn context_from_stdin(&self, dir: &std::path::Path) -> Result<Option<String>> {
        anyhow::ensure!(
            self.file.as_deref() != Some(std::path::Path::new("-")),
            "the context and the Dockerfile cannot both come from standard input"
        );
        match read_stdin_context(std::io::stdin().lock(), dir)? {
            StdinContext::Archive => Ok(None),
            StdinContext::Dockerfile(text) => {
                if let Some(file) = &self.file {
                    anyhow::bail!(
                        "-f {}: standard input, given as the context, is a Dockerfile itself",
                        file.display()
                    );
                }
                Ok(Some(text))
            }
        }
    }

    /// The entitlements this build asks for: `--allow`'s, and `network.host`
    /// for `--network=host` (as buildx's flag asks for it).
    fn entitlements(&self) -> Result<Entitlements> {
        let mut asked = Entitlements::from_flag("--allow", &self.allow)?;
        if self.network == NetworkFlag::Host {
            asked.insert(Entitlement::NetworkHost);
        }
        Ok(asked)
    }

    /// `--add-host`, `--ulimit` and `--shm-size`, checked.
    fn sandbox(&self) -> Result<SandboxOptions> {
        Ok(SandboxOptions::from_flags(
            &self.add_hosts,
            &self.ulimits,
            self.shm_size.as_deref(),
        )?)
    }

    /// `--build-arg`s, with `SOURCE_DATE_EPOCH` from the environment when
    /// no `--build-arg` sets it (as buildx does); the frontend checks and
    /// resolves it.
    fn build_args(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let mut build_args = crate::debug::parse_build_args(&self.build_args)?;
        if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
            build_args
                .entry("SOURCE_DATE_EPOCH".to_owned())
                .or_insert(epoch);
        }
        Ok(build_args)
    }

    /// `--label`s, each `KEY=VALUE` (or `KEY`), together within kiln's bound.
    fn labels(&self) -> Result<std::collections::BTreeMap<String, String>> {
        let labels = self
            .labels
            .iter()
            .map(|l| parse_label(l))
            .collect::<Result<_, _>>()?;
        check_labels(&labels)?;
        Ok(labels)
    }

    /// The context argument made ready, in `tmp` when it must be read from
    /// standard input or fetched (see [`ContextArg`]).
    fn prepare_context(&self, tmp: &std::path::Path) -> Result<Context> {
        let file = self.file.as_deref();
        match ContextArg::parse(&self.context) {
            ContextArg::Local(dir) => Ok(Context {
                source: DockerfileSource::new(file, &dir),
                dir,
                piped: None,
                time: None,
                _scratch: Scratch::None,
            }),
            ContextArg::Stdin => {
                let dir = tmp.join(format!("context-{}", std::process::id()));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let guard = TempDir(dir.clone());
                let piped = self.context_from_stdin(&dir)?;
                Ok(Context {
                    source: DockerfileSource::new(file, &dir),
                    dir,
                    piped,
                    time: None,
                    _scratch: Scratch::Stdin { _dir: guard },
                })
            }
            remote => {
                if !self.quiet {
                    eprintln!("fetching the build context {}", self.context.display());
                }
                let fetched = fetch_context(&remote, tmp)?;
                if fetched.dockerfile.is_some()
                    && let Some(file) = file
                {
                    anyhow::bail!(
                        "-f {}: the context URL {} is a Dockerfile itself",
                        file.display(),
                        self.context.display()
                    );
                }
                Ok(Context {
                    source: fetched.dockerfile_source(file)?,
                    dir: fetched.dir.clone(),
                    piped: fetched.dockerfile.clone(),
                    time: fetched.time,
                    _scratch: Scratch::Remote { _fetched: fetched },
                })
            }
        }
    }

    /// `--check`: the build checks of every stage, nothing built. They
    /// are the frontend's and need no daemon; embedded, base images' ENV
    /// comes from the store (never pulled), through kilnd from nowhere (a
    /// stage on an image is then not checked for undefined variables).
    fn run_check(&self, root: &std::path::Path, embedded: bool) -> Result<()> {
        anyhow::ensure!(
            self.context.as_os_str() != "-",
            "--check reads the Dockerfile and .dockerignore of a context directory, not standard input"
        );
        let context = self.prepare_context(&std::env::temp_dir())?;
        let request = BuildRequest {
            dockerfile: context.dockerfile()?,
            dockerignore: context.dockerignore()?,
            build_args: self.build_args()?,
            target: self.target.clone(),
            ..BuildRequest::default()
        };
        let store = embedded.then(|| Store::open(root)).transpose()?;
        let result = kiln_solver::build::check(store.as_ref(), &request)?;
        let name = self
            .file
            .as_deref()
            .map_or("Dockerfile".into(), |f| f.display().to_string());
        crate::check::print(&result, &request.dockerfile, &name)
    }

    /// `-o` values with `--push` and `--load` as the outputs they stand
    /// for (buildx's shorthands).
    fn output_specs(&self) -> Vec<String> {
        let mut specs = self.outputs.clone();
        if self.push {
            specs.push("type=registry".to_owned());
        }
        if self.load {
            specs.push("type=docker".to_owned());
        }
        specs
    }

    /// The typed request of the flags; the Dockerfile and what else
    /// comes from the context are filled in once it is ready.
    fn request(&self) -> Result<Request> {
        let mut tags = normalize_names("-t", &self.tags)?;
        let outputs = Outputs::parse(&self.output_specs(), !tags.is_empty())?;
        check_stdout(&outputs.files, self.quiet)?;
        tags.extend(outputs.names);
        if outputs.untagged {
            tags.clear();
        }
        // S3 settings a value leaves unset come from this machine's AWS
        // variables (through kilnd too: kilnd never uses its own).
        let env = |k: &str| std::env::var(k).ok();
        let caches = |flag, direction, specs: &[String]| {
            specs
                .iter()
                .map(|s| parse_cache(flag, direction, s, &env))
                .collect::<Result<Vec<_>, _>>()
        };
        let request = Request {
            build_args: self.build_args()?,
            target: self.target.clone(),
            platforms: parse_platforms(&self.platforms)?,
            tags,
            labels: self.labels()?,
            annotations: {
                let mut a = parse_annotations(&self.annotations)?;
                a.0.extend(outputs.annotations.0);
                a
            },
            no_cache: self.no_cache,
            no_cache_filter: self.no_cache_filter.clone(),
            pull: parse_pull(&self.pull)?,
            network: match self.network {
                NetworkFlag::Default => Network::Private,
                NetworkFlag::None => Network::None,
                NetworkFlag::Host => Network::Host,
            },
            sandbox: self.sandbox()?,
            entitlements: self.entitlements()?,
            compression: outputs.compression,
            files: outputs.files,
            push: outputs.push,
            cache_imports: caches("--cache-from", Direction::Import, &self.cache_from)?,
            cache_exports: caches("--cache-to", Direction::Export, &self.cache_to)?,
            registry: self.registry.options(None)?,
            secrets: self
                .secrets
                .iter()
                .map(|s| read_secret(s))
                .collect::<Result<_>>()?,
            // Through kilnd, forwarded over the build's call: the agents
            // stay on this machine.
            ssh: self
                .ssh
                .iter()
                .map(|s| ssh_agent(s))
                .collect::<Result<_>>()?,
            ..Request::default()
        };
        // Names and values checked before anything is read or fetched.
        kiln_solver::pipeline::contexts::parse_all(&self.build_contexts)?;
        // As kilnd checks a client's: the same message both ways.
        check_lists(&request)?;
        check_outputs_for_platforms(&request)?;
        check_annotations(&request)?;
        Ok(request)
    }

    /// The build through kilnd: the context goes over the wire (without
    /// what `.dockerignore` excludes), reports come back.
    fn run_remote(&self, mut remote: crate::remote::Remote, mut request: Request) -> Result<()> {
        // A context on standard input or at a URL is unpacked or fetched
        // here, then sent as a directory.
        let context = self.prepare_context(&std::env::temp_dir())?;
        context.fill(&mut request)?;
        let named = self.named_contexts(&std::env::temp_dir())?;
        request.named_contexts.clone_from(&named.contexts);
        let mut printer = Printer::new(self.progress, self.quiet);
        let result = remote.build(&request, &context.dir, &mut |r| printer.report(r));
        printer.finish();
        let result = match result {
            Err(ClientError::Step { message, log_tail }) => {
                // A failed step's last lines come with its error, as embedded.
                for line in &log_tail {
                    eprintln!("  {line}");
                }
                anyhow::bail!("{message}");
            }
            other => other?,
        };
        self.print_result(
            &result.config,
            &result.manifest,
            &result.tags,
            Some(result.context_bytes),
        );
        if self.wants_metadata() {
            self.write_metadata(&Metadata::try_from(&result)?)?;
        }
        Ok(())
    }

    /// Whether `--metadata-file` or `--iidfile` asks for the result.
    fn wants_metadata(&self) -> bool {
        self.metadata_file.is_some() || self.iidfile.is_some()
    }

    /// `--metadata-file` and `--iidfile`, each written whole (beside, then
    /// renamed) into a directory that must exist, as buildx's.
    fn write_metadata(&self, metadata: &Metadata) -> Result<()> {
        // `type=cacheonly` alone made no image to name (buildx then writes
        // only the build's ref, and no image ID).
        let cache_only = Outputs::parse(&self.output_specs(), true).is_ok_and(|o| o.untagged);
        if let Some(path) = &self.metadata_file {
            let json = if cache_only {
                serde_json::json!({"buildx.build.ref": metadata.build_ref})
            } else {
                metadata.to_json()
            };
            let mut text = serde_json::to_string_pretty(&json)?;
            text.push('\n');
            write_whole(path, text.as_bytes()).context("--metadata-file")?;
        }
        if cache_only {
            return Ok(());
        }
        if let Some(path) = &self.iidfile {
            write_whole(path, metadata.image_id().to_string().as_bytes()).context("--iidfile")?;
        }
        Ok(())
    }

    /// The build on this machine's store.
    fn run_embedded(&self, root: &std::path::Path, mut request: Request) -> Result<()> {
        // Opened first: it clears the root's tmp/, where a piped or
        // fetched context goes.
        let store = Store::open(root)?;
        let context = self.prepare_context(&root.join("tmp"))?;
        context.fill(&mut request)?;
        let named = self.named_contexts(&root.join("tmp"))?;
        request.named_contexts.clone_from(&named.contexts);
        let env = Env {
            store: &store,
            context: context
                .dir
                .canonicalize()
                .with_context(|| format!("build context {}", context.dir.display()))?,
            shared: Default::default(),
            cancellation: Default::default(),
            write_files: true,
        };
        let mut printer = Printer::new(self.progress, self.quiet);
        let result = pipeline::run(&request, &env, &mut |r| printer.report(r));
        printer.finish();
        let built = match result {
            Ok(built) => built,
            Err(PipelineError::Build(BuildError::Solve(SolveError::ExitCode {
                description,
                code,
                log_tail,
            }))) => {
                for line in &log_tail {
                    eprintln!("  {line}");
                }
                anyhow::bail!("{description}: did not complete successfully: exit code {code}");
            }
            Err(e) => return Err(e.into()),
        };
        let (config, manifest) = (built.id.to_string(), built.manifest.to_string());
        self.print_result(&config, &manifest, &request.tags, None);
        if self.wants_metadata() {
            let build_ref = pipeline::metadata::new_build_ref("embedded")?;
            self.write_metadata(&Metadata::of(&store, &built, &request.tags, build_ref)?)?;
        }
        Ok(())
    }

    /// The image built: its ID alone with `-q`, a JSON object with
    /// `--progress=json`, else docker's lines.
    fn print_result(
        &self,
        config: &str,
        manifest: &str,
        tags: &[String],
        context_bytes: Option<u64>,
    ) {
        if self.quiet {
            println!("{config}");
        } else if matches!(self.progress, Mode::Quiet | Mode::None) {
        } else if self.progress == Mode::Rawjson {
            // As vertexes of their own: a rawjson reader sees only JSON.
            let mut raw = crate::rawjson::RawJson::new();
            let lines = std::iter::once(format!("writing image {config} done"))
                .chain(tags.iter().map(|t| format!("naming to {t} done")));
            for text in lines {
                let notice = pipeline::Notice {
                    level: pipeline::Level::Info,
                    text,
                };
                eprintln!("{}", raw.notice(&notice));
            }
        } else if self.progress == Mode::Json {
            let mut line = serde_json::json!({"event": "image", "id": config, "manifest": manifest, "tags": tags});
            if let Some(bytes) = context_bytes {
                line["context_bytes"] = bytes.into();
            }
            eprintln!("{line}");
        } else {
            if let Some(bytes) = context_bytes {
                eprintln!("transferring context: {bytes} bytes done");
            }
            eprintln!("writing image {config} done");
            for tag in tags {
                eprintln!("naming to {tag} done");
            }
        }
    }

    pub(crate) fn run(
        self,
        root: &std::path::Path,
        remote: Option<crate::remote::Remote>,
    ) -> Result<()> {
        for warning in self.buildx.check()? {
            eprintln!("warning: {warning}");
        }
        let keeps_times = self
            .outputs
            .iter()
            .any(|o| kiln_image::output::rewrites_timestamps(o) == Some(false));
        if keeps_times {
            eprintln!(
                "warning: rewrite-timestamp=false is not honoured: with SOURCE_DATE_EPOCH kiln \
                 always clamps the mtimes in the layers a build makes (rewrite-timestamp=true)"
            );
        }
        // A misspelt --allow fails before anything is read or sent.
        // Embedded, kiln is this machine's own user's: what it asks is
        // granted (the solver checks the steps against it); kilnd grants
        // within what its operator allowed.
        self.entitlements()?;
        self.sandbox()?;
        if self.check || self.call == Call::Check {
            return self.run_check(root, remote.is_none());
        }
        let request = self.request()?;
        match remote {
            Some(remote) => self.run_remote(remote, request),
            None => self.run_embedded(root, request),
        }
    }
}
