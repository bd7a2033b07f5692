//! Where the image commands run: this machine's store ([`Local`]) or kilnd
//! (the client library's [`Remote`]). Each command is written once, on
//! [`Backend`]; `main` picks the backend once.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use kiln_cache::Store;
use kiln_image::archive::{self, Format};
use kiln_image::images::{self, ImageSummary, Usage};
use kiln_proto::control::v1 as pb;
use kiln_proto::ops::v1::Platform;
use kiln_registry::Platforms;

use crate::remote::Remote;

/// What a pull brought.
pub(crate) struct Pulled {
    pub(crate) name: String,
    /// What the name tags: a manifest or an index.
    pub(crate) manifest: String,
    /// The platforms of an index fetched; empty for one manifest.
    pub(crate) platforms: Vec<String>,
    pub(crate) fetched: u64,
    pub(crate) bytes: u64,
}

/// What a push sent: blobs uploaded, mounted from another repository,
/// already there.
pub(crate) struct Pushed {
    pub(crate) manifest: String,
    pub(crate) counts: [u64; 3],
}

/// The image commands' operations, on a store here or through kilnd.
/// Both answer alike: the commands print the same either way.
pub(crate) trait Backend {
    fn list(&mut self) -> Result<Vec<ImageSummary>>;
    /// docker inspect's JSON array, one object per name; of a
    /// multi-platform image, `platform`'s entry.
    fn inspect(&mut self, names: Vec<String>, platform: Option<&str>) -> Result<String>;
    fn tag(&mut self, source: &str, target: &str) -> Result<()>;
    /// The name untagged and the digests deleted.
    fn remove(&mut self, name: &str) -> Result<(String, Vec<String>)>;
    /// The digests deleted and the bytes reclaimed.
    fn prune(&mut self, all: bool, keep_storage: Option<u64>) -> Result<(Vec<String>, u64)>;
    fn disk_usage(&mut self) -> Result<Usage>;
    /// The workers that run steps.
    fn workers(&mut self) -> Result<Vec<pb::Worker>>;
    /// A docker-archive takes `platform`'s image of a multi-platform
    /// image (none: the host's). The notes to show the user.
    fn save(
        &mut self,
        names: Vec<String>,
        format: Format,
        platform: Option<&str>,
        output: &Path,
    ) -> Result<Vec<String>>;
    /// The names tagged and the digests of untagged images.
    fn load(&mut self, input: &Path) -> Result<(Vec<String>, Vec<String>)>;
    /// The manifest digest; `created`: `SOURCE_DATE_EPOCH`, else now;
    /// `platform`: what the files are for, else this machine's (kilnd's).
    fn import(
        &mut self,
        file: &Path,
        name: &str,
        created: Option<u64>,
        platform: Option<&Platform>,
    ) -> Result<String>;
    /// Of a multi-platform image, the `wanted` platforms.
    fn pull(
        &mut self,
        name: &str,
        options: &kiln_registry::Options,
        wanted: &Platforms,
    ) -> Result<Pulled>;
    fn push(&mut self, name: &str, options: &kiln_registry::Options) -> Result<Pushed>;
}

/// What a docker-archive save of multi-platform images tells the user.
fn one_platform_notes(report: &archive::SaveReport) -> Vec<String> {
    report
        .one_platform
        .iter()
        .map(|(name, platform)| {
            format!(
                "{}: a multi-platform image; the docker-archive holds its {platform} image only (--platform picks another, --format oci keeps them all)",
                kiln_image::image::familiar(name)
            )
        })
        .collect()
}

/// The store at a root, opened at the first command that needs it.
pub(crate) struct Local {
    root: PathBuf,
    store: Option<Store>,
}

impl Local {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            store: None,
        }
    }

    fn store(&mut self) -> Result<&Store> {
        let store = match self.store.take() {
            Some(store) => store,
            None => Store::open(&self.root)?,
        };
        Ok(self.store.insert(store))
    }
}

impl Backend for Local {
    fn list(&mut self) -> Result<Vec<ImageSummary>> {
        Ok(images::list(self.store()?)?)
    }

    fn inspect(&mut self, names: Vec<String>, platform: Option<&str>) -> Result<String> {
        let platform = platform
            .map(|p| kiln_frontend::platform::parse(p).with_context(|| format!("--platform {p}")))
            .transpose()?;
        let store = self.store()?;
        let all = names
            .iter()
            .map(|n| images::inspect(store, n, platform.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(serde_json::to_string_pretty(&all)?)
    }

    fn tag(&mut self, source: &str, target: &str) -> Result<()> {
        images::tag(self.store()?, source, target)?;
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(String, Vec<String>)> {
        let removed = images::remove(self.store()?, name)?;
        let deleted = removed.deleted.iter().map(ToString::to_string).collect();
        Ok((removed.untagged, deleted))
    }

    fn prune(&mut self, all: bool, keep_storage: Option<u64>) -> Result<(Vec<String>, u64)> {
        let pruned = images::prune(self.store()?, keep_storage, all)?;
        let deleted = pruned.deleted.iter().map(ToString::to_string).collect();
        Ok((deleted, pruned.reclaimed))
    }

    fn disk_usage(&mut self) -> Result<Usage> {
        Ok(images::usage(self.store()?)?)
    }

    /// Embedded, steps run on this machine only.
    fn workers(&mut self) -> Result<Vec<pb::Worker>> {
        Ok(vec![kiln_daemon::control::local_worker()])
    }

    fn save(
        &mut self,
        names: Vec<String>,
        format: Format,
        platform: Option<&str>,
        output: &Path,
    ) -> Result<Vec<String>> {
        let platform = platform
            .map(|p| kiln_frontend::platform::parse(p).with_context(|| format!("--platform {p}")))
            .transpose()?;
        let report =
            archive::save_to_file(self.store()?, &names, format, platform.as_ref(), output)?;
        Ok(one_platform_notes(&report))
    }

    fn load(&mut self, input: &Path) -> Result<(Vec<String>, Vec<String>)> {
        let loaded = archive::load(self.store()?, input)?;
        let untagged = loaded.untagged.iter().map(ToString::to_string).collect();
        Ok((loaded.tags, untagged))
    }

    fn import(
        &mut self,
        file: &Path,
        name: &str,
        created: Option<u64>,
        platform: Option<&Platform>,
    ) -> Result<String> {
        let store = self.store()?;
        let created = created.unwrap_or_else(kiln_image::image::now);
        Ok(archive::import(store, file, name, created, platform)?.to_string())
    }

    fn pull(
        &mut self,
        name: &str,
        options: &kiln_registry::Options,
        wanted: &Platforms,
    ) -> Result<Pulled> {
        let pulled = kiln_registry::pull_platforms(self.store()?, name, options, wanted)?;
        Ok(Pulled {
            name: pulled.name,
            manifest: pulled.manifest.to_string(),
            platforms: pulled.platforms,
            fetched: pulled.fetched as u64,
            bytes: pulled.bytes,
        })
    }

    fn push(&mut self, name: &str, options: &kiln_registry::Options) -> Result<Pushed> {
        let p = kiln_registry::push(self.store()?, name, options)?;
        Ok(Pushed {
            manifest: p.manifest.to_string(),
            counts: [p.uploaded, p.mounted, p.skipped].map(|n| n as u64),
        })
    }
}

impl Backend for Remote {
    fn list(&mut self) -> Result<Vec<ImageSummary>> {
        Ok(self
            .list_images()?
            .into_iter()
            .map(kiln_daemon::control::summary_of)
            .collect())
    }

    fn inspect(&mut self, names: Vec<String>, platform: Option<&str>) -> Result<String> {
        Ok(Remote::inspect_platform(
            self,
            names,
            platform.unwrap_or_default().to_owned(),
        )?)
    }

    fn tag(&mut self, source: &str, target: &str) -> Result<()> {
        Ok(Remote::tag(self, source.to_owned(), target.to_owned())?)
    }

    fn remove(&mut self, name: &str) -> Result<(String, Vec<String>)> {
        Ok(Remote::remove(self, name)?)
    }

    fn prune(&mut self, all: bool, keep_storage: Option<u64>) -> Result<(Vec<String>, u64)> {
        // 0 on the wire: no bound.
        Ok(Remote::prune(self, all, keep_storage.unwrap_or(0))?)
    }

    fn disk_usage(&mut self) -> Result<Usage> {
        Ok(Remote::disk_usage(self)?)
    }

    fn workers(&mut self) -> Result<Vec<pb::Worker>> {
        Ok(self.list_workers()?)
    }

    /// kilnd sends the archive only: no notes.
    fn save(
        &mut self,
        names: Vec<String>,
        format: Format,
        platform: Option<&str>,
        output: &Path,
    ) -> Result<Vec<String>> {
        let format = match format {
            Format::Docker => "docker",
            Format::Oci => "oci",
        };
        let platform = platform.unwrap_or_default();
        Remote::save_platform(self, names, format, platform, output)?;
        Ok(Vec::new())
    }

    fn load(&mut self, input: &Path) -> Result<(Vec<String>, Vec<String>)> {
        Ok(Remote::load(self, input)?)
    }

    fn import(
        &mut self,
        file: &Path,
        name: &str,
        created: Option<u64>,
        platform: Option<&Platform>,
    ) -> Result<String> {
        Ok(Remote::import(self, file, name, created, platform)?)
    }

    fn pull(
        &mut self,
        name: &str,
        options: &kiln_registry::Options,
        wanted: &Platforms,
    ) -> Result<Pulled> {
        let pulled = Remote::pull(
            self,
            pb::PullRequest {
                name: name.to_owned(),
                platform: wanted.text(),
                insecure_registries: options.insecure.clone(),
                all_platforms: *wanted == Platforms::All,
            },
        )?;
        Ok(Pulled {
            name: pulled.name,
            manifest: pulled.manifest,
            platforms: pulled.platforms,
            fetched: pulled.fetched,
            bytes: pulled.bytes,
        })
    }

    fn push(&mut self, name: &str, options: &kiln_registry::Options) -> Result<Pushed> {
        let p = Remote::push(
            self,
            pb::PushRequest {
                name: name.to_owned(),
                insecure_registries: options.insecure.clone(),
            },
        )?;
        Ok(Pushed {
            manifest: p.manifest,
            counts: [p.uploaded, p.mounted, p.skipped],
        })
    }
}
