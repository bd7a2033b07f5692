//! `kiln`: build Dockerfiles into OCI images, with docker-build habits.

mod build;
mod debug;
mod images;
mod progress;
mod registry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Build Dockerfiles into OCI images")]
struct Cli {
    /// kiln's store (images, build cache); default /var/lib/kiln for root,
    /// $XDG_DATA_HOME/kiln otherwise.
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(build::Build),
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
    /// Log in to a registry (credentials kept as Docker keeps them).
    Login(registry::Login),
    /// Remove content nothing uses, least recently used first.
    Prune(images::Prune),
    /// Show disk space by kind.
    Du,
    /// Look inside the frontend: the AST and the build graph.
    #[command(subcommand)]
    Debug(debug::Debug),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let root = cli.root.unwrap_or_else(kiln_cache::default_root);
    let result = match cli.command {
        Command::Build(c) => c.run(&root),
        Command::Images(c) => c.run(&root),
        Command::Inspect(c) => c.run(&root),
        Command::Tag(c) => c.run(&root),
        Command::Rmi(c) => c.run(&root),
        Command::Load(c) => c.run(&root),
        Command::Save(c) => c.run(&root),
        Command::Import(c) => c.run(&root),
        Command::Pull(c) => c.run(&root),
        Command::Push(c) => c.run(&root),
        Command::Login(c) => c.run(),
        Command::Prune(c) => c.run(&root),
        Command::Du => images::du(&root),
        Command::Debug(debug) => debug.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
