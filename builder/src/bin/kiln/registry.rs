//! The registry commands: pull, push, login.

use std::io::Read as _;

use anyhow::{Context as _, Result};
use clap::Args;
use kiln_registry::Credentials;
use kiln_solver::pipeline::request::check_count;

use crate::backend::Backend;

/// How kiln reaches registries (shared by pull, push, login and build).
#[derive(Args, Clone, Default)]
pub(crate) struct RegistryArgs {
    /// Speak plain HTTP to this registry (`host[:port]`); loopback
    /// registries always are. Through kilnd (`--addr`), only to one kilnd
    /// was started with `--insecure-registry` for.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
}

impl RegistryArgs {
    pub(crate) fn options(&self, platform: Option<&str>) -> Result<kiln_registry::Options> {
        let platform = platform
            .map(|p| kiln_frontend::platform::parse(p).with_context(|| format!("--platform {p}")))
            .transpose()?;
        // The same bound as kilnd's, embedded too.
        check_count("--insecure-registry", self.insecure.len())?;
        Ok(kiln_registry::Options {
            insecure: self.insecure.clone(),
            platform,
            chunk_size: 0,
        })
    }
}

#[derive(Args)]
pub(crate) struct Pull {
    /// `NAME[:TAG]` or `NAME@DIGEST`.
    name: String,
    /// Of a multi-platform image, the platforms to fetch (`os/arch`, or a
    /// comma list); default this machine's. The index is kept whole: a
    /// later pull of another platform adds it.
    #[arg(long)]
    platform: Option<String>,
    /// Fetch every platform of a multi-platform image.
    #[arg(long, conflicts_with = "platform")]
    all_platforms: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl Pull {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        // Checked here: the same error for a bad --platform both ways.
        let options = self.registry.options(None)?;
        let wanted = kiln_registry::Platforms::parse(
            self.platform.as_deref().unwrap_or_default(),
            self.all_platforms,
            None,
        )
        .map_err(anyhow::Error::msg)?;
        let pulled = backend.pull(&self.name, &options, &wanted)?;
        print_pulled(&pulled);
        Ok(())
    }
}

fn print_pulled(pulled: &crate::backend::Pulled) {
    let mut out = format!(
        "{}: {} blobs fetched ({} bytes)\n",
        kiln_image::image::familiar(&pulled.name),
        pulled.fetched,
        pulled.bytes
    );
    if !pulled.platforms.is_empty() {
        out.push_str(&format!("Platforms: {}\n", pulled.platforms.join(", ")));
    }
    out.push_str(&format!("Digest: {}", pulled.manifest));
    println!("{out}");
}

#[derive(Args)]
pub(crate) struct Push {
    /// The image, named with its registry (`127.0.0.1:5000/app:1`).
    name: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl Push {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        let p = backend.push(&self.name, &self.registry.options(None)?)?;
        print_pushed(&self.name, p.counts, &p.manifest);
        Ok(())
    }
}

fn print_pushed(name: &str, [uploaded, mounted, skipped]: [u64; 3], manifest: &str) {
    println!(
        "{name}: {uploaded} uploaded, {mounted} mounted, {skipped} already there\nDigest: {manifest}"
    );
}

#[derive(Args)]
pub(crate) struct Login {
    /// The registry (`host[:port]`); default Docker Hub.
    #[arg(default_value = "docker.io")]
    server: String,
    #[arg(short, long)]
    username: String,
    /// Read the password from standard input (the only way: a password on
    /// the command line ends up in shell history and `ps`).
    #[arg(long, required = true)]
    password_stdin: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

impl Login {
    pub(crate) fn run(self) -> Result<()> {
        let mut secret = String::new();
        std::io::stdin()
            .read_to_string(&mut secret)
            .context("reading the password from standard input")?;
        let secret = secret.trim_end_matches(['\n', '\r']).to_owned();
        anyhow::ensure!(!secret.is_empty(), "no password on standard input");
        let credentials = Credentials {
            username: self.username,
            secret,
        };
        let path = kiln_registry::login(&self.server, &credentials, &self.registry.options(None)?)?;
        println!("Login Succeeded (credentials in {})", path.display());
        Ok(())
    }
}
