//! `kiln debug parse`, `kiln debug graph` and `kiln debug platforms`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use kiln_frontend::convert::{self, BuildGraph, ConvertOptions, NoImages};
use kiln_frontend::{instructions, parser, platform};
use kiln_solver::context::DockerfileSource;
use kiln_worker::platforms::{Platforms, State};

#[derive(Subcommand)]
pub(crate) enum Debug {
    /// Print the Dockerfile's AST in BuildKit's dump format.
    Parse {
        /// The Dockerfile (`-` for standard input).
        #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
        file: PathBuf,
    },
    /// Print the build graph (ops with digests) and each stage's image config.
    Graph(GraphArgs),
    /// List the platforms this host runs RUN steps for: natively, and under
    /// emulation through binfmt_misc (QEMU), with the handlers that cannot
    /// run a step and why.
    Platforms,
}

#[derive(Args)]
pub(crate) struct GraphArgs {
    /// The Dockerfile (`-` for standard input); default: CONTEXT/Dockerfile.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Set a build argument (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    build_args: Vec<String>,
    /// The stage to build; default: the last one.
    #[arg(long)]
    target: Option<String>,
    /// The platforms to build for (`os/arch[/variant]`, a comma-separated
    /// list or repeated); default: this machine's. With several, JSON is
    /// an array of their graphs and DOT the graph they make together.
    #[arg(long = "platform", value_name = "PLATFORM")]
    platforms: Vec<String>,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// The build context (for `.dockerignore`).
    #[arg(default_value = ".")]
    context: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Dot,
}

impl Debug {
    pub(crate) fn run(self) -> Result<()> {
        match self {
            Self::Parse { file } => {
                let source = DockerfileSource::new(Some(&file), PathBuf::from(".").as_path());
                let text = source.read()?;
                let ast = parser::parse(&text)?;
                for warning in &ast.warnings {
                    eprintln!("warning: line {}: {}", warning.line, warning.message);
                }
                write_stdout(&ast.dump())
            }
            Self::Graph(args) => args.run(),
            Self::Platforms => write_stdout(&platforms_text(&Platforms::detect())),
        }
    }
}

impl GraphArgs {
    fn run(self) -> Result<()> {
        let source = DockerfileSource::new(self.file.as_deref(), &self.context);
        let text = source.read()?;
        let mut options = ConvertOptions::new(&NoImages);
        options.build_args = parse_build_args(&self.build_args)?;
        options.target = self.target;
        options.dockerignore = source.dockerignore(&self.context)?;
        let targets = kiln_solver::pipeline::request::parse_platforms(&self.platforms)?;
        let targets = if targets.is_empty() {
            vec![platform::host()]
        } else {
            targets
        };
        options.name_platforms = targets.len() > 1;
        let ast = parser::parse(&text)?;
        let stages = instructions::parse(&ast)?;
        let mut graphs = Vec::with_capacity(targets.len());
        for target in targets {
            options.target_platform = target;
            graphs.push(convert::convert(&stages, &options)?);
        }
        let mut warned = Vec::new();
        for warning in ast
            .warnings
            .iter()
            .chain(graphs.iter().flat_map(|g| &g.warnings))
        {
            if !warned.contains(&warning.message) {
                eprintln!("warning: {}", warning.message);
                warned.push(warning.message.clone());
            }
        }
        let out = match (self.format, graphs.as_slice()) {
            (Format::Json, [one]) => serde_json::to_string_pretty(one)? + "\n",
            (Format::Json, several) => serde_json::to_string_pretty(several)? + "\n",
            (Format::Dot, several) => to_dot(&convert::merged(several)),
        };
        write_stdout(&out)
    }
}

/// `KEY=VALUE`, or `KEY` alone for the value of `$KEY` (skipped when unset),
/// as `docker build --build-arg` does.
pub(crate) fn parse_build_args(args: &[String]) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (arg.as_str(), std::env::var(arg).ok()),
        };
        if key.is_empty() {
            bail!("--build-arg {arg:?}: the name is empty");
        }
        if let Some(value) = value {
            map.insert(key.to_owned(), value);
        }
    }
    Ok(map)
}

/// Graphviz: one node per op (its description and short digest), an edge
/// from each input to its user.
fn to_dot(graph: &BuildGraph) -> String {
    let short = |d: &str| {
        d.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    let mut out =
        String::from("digraph kiln {\n  rankdir=LR;\n  node [shape=box, fontname=monospace];\n");
    for v in &graph.vertices {
        let label = format!("{}\\n{}", v.meta.description, short(&v.digest)).replace('"', "\\\"");
        let _ = writeln!(out, "  \"{}\" [label=\"{label}\"];", short(&v.digest));
        for input in &v.op.inputs {
            let _ = writeln!(out, "  \"{}\" -> \"{}\";", short(input), short(&v.digest));
        }
    }
    out.push_str("}\n");
    out
}

/// What `debug platforms` prints: a section each for native, emulated
/// and unusable, one platform a line.
fn platforms_text(p: &Platforms) -> String {
    let dir = p.binfmt_misc.display();
    let mut out = String::from("native:\n");
    for native in &p.native {
        let _ = if native.confined {
            writeln!(out, "  {}", native.platform)
        } else {
            writeln!(
                out,
                "  {:<14} the CPU runs it, but a RUN step's sandbox refuses its system calls \
                 (its seccomp filter takes this machine's own only): with --security=insecure only",
                native.platform
            )
        };
    }
    let _ = match p.binfmt {
        State::NotMounted => writeln!(
            out,
            "emulated: none: binfmt_misc is not mounted at {dir} \
             (`mount -t binfmt_misc binfmt_misc {dir}`)"
        ),
        State::Disabled => writeln!(
            out,
            "emulated: none: binfmt_misc is disabled (`echo 1 > {dir}/status`)"
        ),
        State::Enabled if p.emulated.is_empty() => writeln!(
            out,
            "emulated: none: no binfmt_misc handler with the fix-binary flag in {dir}"
        ),
        State::Enabled => writeln!(
            out,
            "emulated (binfmt_misc handlers with the fix-binary flag, in {dir}):"
        ),
    };
    for e in &p.emulated {
        let _ = writeln!(
            out,
            "  {:<14} {:<18} {}",
            e.platform, e.handler, e.interpreter
        );
    }
    if p.emulated.is_empty() {
        out.push_str(
            "  (for QEMU user emulation: `apt-get install qemu-user-static binfmt-support` \
             on Debian, or `docker run --privileged --rm tonistiigi/binfmt --install all`)\n",
        );
    }
    if !p.unusable.is_empty() {
        out.push_str("unusable (their handlers do not run a RUN step's programs):\n");
    }
    for u in &p.unusable {
        let _ = writeln!(
            out,
            "  {:<14} {:<18} {}: {}",
            u.platform, u.handler, u.interpreter, u.why
        );
    }
    out
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
