//! `kiln`: build Dockerfiles into OCI images, with docker-build habits.

mod build;
mod check;
mod debug;
mod images;
mod progress;
mod registry;
mod remote;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Build Dockerfiles into OCI images")]
struct Cli {
    /// kiln's store (images, build cache); default /var/lib/kiln for root,
    /// $XDG_DATA_HOME/kiln otherwise.
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// kilnd to send commands to (`unix:///PATH`, `tcp://HOST:PORT`); by
    /// default the one at /run/kiln/kilnd.sock if it answers, else none
    /// (kiln works on the store itself).
    #[arg(long, global = true, env = "KILN_ADDR", value_name = "ADDR")]
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
    /// List the workers that run steps: this machine's, and through kilnd
    /// the attached `kiln-worker`s of the farm.
    Workers,
    /// Look inside the frontend: the AST and the build graph.
    #[command(subcommand)]
    Debug(debug::Debug),
}

fn main() -> ExitCode {
    kiln_builder::init_logs("warn");
    let cli = Cli::parse();
    let root = cli.root.unwrap_or_else(kiln_cache::default_root);
    let remote = match &cli.command {
        Command::Debug(_) | Command::Login(_) => Ok(None),
        _ => remote::connect(cli.addr.as_deref(), &cli.tls),
    };
    let remote = match remote {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", kiln_builder::error_chain(e.as_ref()));
            return ExitCode::FAILURE;
        }
    };
    let result = match (cli.command, remote) {
        (Command::Build(c), remote) => c.run(&root, remote),
        (Command::Images(c), Some(remote)) => c.run_remote(remote),
        (Command::Inspect(c), Some(remote)) => c.run_remote(remote),
        (Command::Tag(c), Some(remote)) => c.run_remote(remote),
        (Command::Rmi(c), Some(remote)) => c.run_remote(remote),
        (Command::Prune(c), Some(remote)) => c.run_remote(remote),
        (Command::Du, Some(remote)) => images::du_remote(remote),
        (Command::Workers, Some(remote)) => images::workers_remote(remote),
        (Command::Save(c), Some(remote)) => c.run_remote(remote),
        (Command::Load(c), Some(remote)) => c.run_remote(remote),
        (Command::Import(c), Some(remote)) => c.run_remote(remote),
        (Command::Pull(c), Some(remote)) => c.run_remote(remote),
        (Command::Push(c), Some(remote)) => c.run_remote(remote),
        (_, Some(_)) => Err(anyhow::anyhow!(
            "this command does not go through kilnd yet, and kilnd holds the store: \
             stop kilnd, or give kiln another --root and no --addr"
        )),
        (Command::Images(c), None) => c.run(&root),
        (Command::Inspect(c), None) => c.run(&root),
        (Command::Tag(c), None) => c.run(&root),
        (Command::Rmi(c), None) => c.run(&root),
        (Command::Load(c), None) => c.run(&root),
        (Command::Save(c), None) => c.run(&root),
        (Command::Import(c), None) => c.run(&root),
        (Command::Pull(c), None) => c.run(&root),
        (Command::Push(c), None) => c.run(&root),
        (Command::Login(c), None) => c.run(),
        (Command::Prune(c), None) => c.run(&root),
        (Command::Du, None) => images::du(&root),
        (Command::Workers, None) => images::workers(),
        (Command::Debug(debug), None) => debug.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `build --check` printed them.
        Err(e) if e.downcast_ref::<check::ViolationsFound>().is_some() => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {}", kiln_builder::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
