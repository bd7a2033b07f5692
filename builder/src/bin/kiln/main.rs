//! `kiln`: build Dockerfiles into OCI images, with docker-build habits.

mod backend;
mod build;
mod buildx_flags;
mod check;
mod debug;
mod images;
mod progress;
mod rawjson;
mod registry;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The help heading of the options every command takes, apart from a
/// command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(name = "kiln", version, about = "Build Dockerfiles into OCI images")]
struct Cli {
    /// kiln's store (images, build cache); default /var/lib/kiln for root,
    /// $XDG_DATA_HOME/kiln otherwise.
    #[arg(
        long,
        global = true,
        env = "KILN_ROOT",
        value_name = "DIR",
        help_heading = GLOBAL
    )]
    root: Option<PathBuf>,
    /// kilnd to send commands to (`unix:///PATH`, `tcp://HOST:PORT`); by
    /// default the one at /run/kiln/kilnd.sock if it answers, else none
    /// (kiln works on the store itself).
    #[arg(
        long,
        global = true,
        env = "KILN_ADDR",
        value_name = "ADDR",
        help_heading = GLOBAL
    )]
    addr: Option<String>,
    #[command(flatten)]
    tls: remote::Tls,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Boxed: its flags outweigh every other command's.
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<build::Build>),
    #[command(flatten)]
    Image(ImageCommand),
    /// Log in to a registry (credentials kept as Docker keeps them).
    Login(registry::Login),
    /// Look inside the frontend: the AST and the build graph.
    #[command(subcommand)]
    Debug(debug::Debug),
}

/// The commands on images and the store: the same embedded and through
/// kilnd (see `backend`).
#[derive(Subcommand)]
enum ImageCommand {
    /// List images.
    Images(images::List),
    /// Show images' config, layers and sizes as JSON.
    Inspect(images::Inspect),
    /// Add a name to an image.
    Tag(images::Tag),
    /// Remove images (the name, then blobs nothing else uses).
    Rmi(images::Rmi),
    /// Load images from a docker-archive or OCI layout tar.
    Load(images::Load),
    /// Save images as a docker-archive (default) or OCI layout tar.
    Save(images::Save),
    /// Make a one-layer image from a root filesystem tarball.
    Import(images::Import),
    /// Pull an image from a registry.
    Pull(registry::Pull),
    /// Push an image to a registry.
    Push(registry::Push),
    /// Remove content nothing uses, least recently used first.
    Prune(images::Prune),
    /// Show disk space by kind.
    Du,
    /// List the workers that run steps: this machine's, and through kilnd
    /// the attached `kiln-worker`s of the farm (STATUS `draining`: stopping,
    /// it finishes its steps and takes no new ones).
    Workers,
}

impl ImageCommand {
    fn run(self, backend: &mut dyn backend::Backend) -> anyhow::Result<()> {
        match self {
            Self::Images(c) => c.run(backend),
            Self::Inspect(c) => c.run(backend),
            Self::Tag(c) => c.run(backend),
            Self::Rmi(c) => c.run(backend),
            Self::Load(c) => c.run(backend),
            Self::Save(c) => c.run(backend),
            Self::Import(c) => c.run(backend),
            Self::Pull(c) => c.run(backend),
            Self::Push(c) => c.run(backend),
            Self::Prune(c) => c.run(backend),
            Self::Du => images::du(backend),
            Self::Workers => images::workers(backend),
        }
    }
}

fn main() -> ExitCode {
    kiln_builder::init_logs("warn");
    kiln_builder::raise_file_limit();
    let cli = Cli::parse();
    let root = cli.root.unwrap_or_else(kiln_cache::default_root);
    let remote = match &cli.command {
        Command::Debug(_) | Command::Login(_) => Ok(None),
        _ => remote::connect(cli.addr.as_deref(), &cli.tls),
    };
    let remote = match remote {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", kiln_image::error_chain(e.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Build(c) => c.run(&root, remote),
        Command::Login(c) => c.run(),
        Command::Debug(debug) => debug.run(),
        // Once, on the store here or through kilnd.
        Command::Image(c) => match remote {
            Some(mut remote) => c.run(&mut remote),
            None => c.run(&mut backend::Local::new(&root)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `build --check` printed them.
        Err(e) if e.downcast_ref::<check::ViolationsFound>().is_some() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", kiln_image::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
