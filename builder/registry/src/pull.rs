//! `kiln pull`: a manifest, or an index with the platforms asked for
//! (the machine's by default), their configs and layers into the store — only blobs the store lacks,
//! several at once, each verified against its digest as it streams — and
//! then, last, the tag.

use std::io::Read;

use kiln_cache::{Digest, Store};
use kiln_frontend::reference::Reference;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::session::{Options, Session};
use super::{MANIFEST_TYPES, Result};
use kiln_image::image;

/// When `FROM` pulls (`kiln build --pull`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Only images not in the store (the default).
    #[default]
    Missing,
    /// Every base image, to get what its tag points at now.
    Always,
    /// Never: a missing image is an error.
    Never,
}

impl PullPolicy {
    /// A policy, or buildx's boolean `--pull[=true|false]` (false: pull
    /// only what is missing, as docker does without `--pull`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "missing" | "false" => Some(Self::Missing),
            "always" | "true" => Some(Self::Always),
            "never" => Some(Self::Never),
            _ => None,
        }
    }
}

/// Which platforms of a multi-platform image a pull fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Platforms {
    /// These (`--platform P1,P2`): each must be in the index.
    These(Vec<image::Platform>),
    /// Every platform's image in the index (`--all-platforms`);
    /// attestations are left out.
    All,
}

impl Platforms {
    /// `--platform` (empty, one, or a comma list) and `--all-platforms`,
    /// checked; nothing asked: `default`. At most
    /// [`image::index::MAX_INDEX_ENTRIES`] platforms.
    pub fn parse(
        list: &str,
        all: bool,
        default: Option<&image::Platform>,
    ) -> std::result::Result<Self, String> {
        let list = list.trim();
        match (list.is_empty(), all) {
            (false, true) => Err("--platform and --all-platforms exclude each other".into()),
            (true, true) => Ok(Self::All),
            (true, false) => Ok(Self::These(vec![
                default.cloned().unwrap_or_else(image::host_platform),
            ])),
            (false, false) => {
                let items: Vec<&str> = list.split(',').map(str::trim).collect();
                if items.len() > image::index::MAX_INDEX_ENTRIES {
                    return Err(format!(
                        "--platform: more than {} platforms (the limit)",
                        image::index::MAX_INDEX_ENTRIES
                    ));
                }
                items
                    .into_iter()
                    .map(|p| {
                        kiln_frontend::platform::parse(p)
                            .map_err(|e| format!("--platform {p}: {e}"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(Self::These)
            }
        }
    }

    /// The `--platform` text of these platforms (empty for all).
    pub fn text(&self) -> String {
        match self {
            Self::All => String::new(),
            Self::These(ps) => ps
                .iter()
                .map(kiln_frontend::platform::format)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// What `options` asks for: its platform, else the host's (as docker).
    pub fn of(options: &Options) -> Self {
        Self::These(vec![
            options
                .platform
                .clone()
                .unwrap_or_else(image::host_platform),
        ])
    }
}

/// What a pull brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The full name tagged.
    pub name: String,
    /// What the tag names: the manifest, or a multi-platform image's index
    /// (the registry's digest).
    pub manifest: Digest,
    /// The platforms of an index this pull asked for (`os/arch`); empty
    /// for a single-platform image.
    pub platforms: Vec<String>,
    /// Blobs fetched (the rest were in the store already).
    pub fetched: usize,
    pub bytes: u64,
}

/// Manifests larger than this are refused (real ones are a few KiB).
const MANIFEST_LIMIT: u64 = 4 << 20;
/// Blobs fetched at once.
const PARALLEL: usize = 4;

/// Pulls `name` (`repo[:tag]` or `repo@digest`) into the store and tags
/// it; of a multi-platform image, `options.platform` (default the host's).
pub fn pull(store: &Store, name: &str, options: &Options) -> Result<Pulled> {
    pull_platforms(store, name, options, &Platforms::of(options))
}

/// Pulls `name` and tags it. A multi-platform image keeps its index (the
/// tag names it): the `wanted` platforms' manifests, configs and layers
/// are fetched, the others stay absent until pulled too (a second pull of
/// another platform adds it under the same index digest).
pub fn pull_platforms(
    store: &Store,
    name: &str,
    options: &Options,
    wanted: &Platforms,
) -> Result<Pulled> {
    let reference = Reference::parse(name)?;
    let session = Session::new(&reference.domain, &reference.path, options, "pull")?;
    let top = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (bytes, media_type) = manifest(&session, &top)?;
    if let Some(pinned) = &reference.digest {
        let got = Digest::of(&bytes);
        if got.to_string() != *pinned {
            return Err(session.failed(
                &format!("manifest {top}"),
                format!("digest mismatch: got {got}"),
            ));
        }
    }
    let mut pulled = Pulled {
        name: tag_name(&reference),
        manifest: Digest::of(&bytes),
        platforms: Vec::new(),
        fetched: 0,
        bytes: 0,
    };
    if image::index::is_index(&bytes) {
        let digest = pulled.manifest.to_string();
        let entries = image::index::entries(&digest, &bytes)?;
        for entry in choose(&session, &entries, wanted)? {
            pulled.platforms.push(image::index::platform_text(&entry));
            pull_entry(store, &session, &entry, &mut pulled)?;
        }
    } else {
        pull_manifest(store, &session, &bytes, &mut pulled)?;
    }
    // Blobs first, the manifests, the index, the tag last: a crash leaves
    // no tag to a half-pulled image.
    store.content.write_bytes(&bytes)?;
    image::tag(store, &pulled.name, &pulled.manifest, &media_type)?;
    store.meta.flush()?;
    Ok(pulled)
}

/// The name a pull tags: `repo:tag`, or `repo@digest` when pulled by
/// digest alone (as Docker names it).
fn tag_name(reference: &Reference) -> String {
    if reference.tag.is_some() || reference.digest.is_none() {
        Reference {
            digest: None,
            ..reference.clone()
        }
        .to_string()
    } else {
        reference.to_string()
    }
}

/// One platform's manifest of an index, unless the store has it whole.
fn pull_entry(
    store: &Store,
    session: &Session,
    entry: &oci_spec::image::Descriptor,
    pulled: &mut Pulled,
) -> Result<()> {
    let digest = entry.digest().to_string();
    let what = format!("manifest {digest}");
    let parsed: Digest = digest
        .parse()
        .map_err(|_| session.failed(&what, "not a sha256 digest"))?;
    if store.content.has(&parsed) && store.complete(&parsed).unwrap_or(false) {
        return Ok(());
    }
    let (bytes, _) = manifest(session, &digest)?;
    if Digest::of(&bytes) != parsed {
        return Err(session.failed(&what, "digest mismatch"));
    }
    if image::index::is_index(&bytes) {
        return Err(session.failed(&what, "an index inside an index is not pulled"));
    }
    pull_manifest(store, session, &bytes, pulled)?;
    store.content.write_bytes(&bytes)?;
    Ok(())
}

/// A manifest's config and layers the store lacks, fetched.
fn pull_manifest(
    store: &Store,
    session: &Session,
    bytes: &[u8],
    pulled: &mut Pulled,
) -> Result<()> {
    let parsed: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| session.failed("reading the manifest", e))?;
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    for descriptor in std::iter::once(&parsed["config"]).chain(
        parsed["layers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    ) {
        let digest: Digest = descriptor["digest"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| {
                session.failed("reading the manifest", "a descriptor without a digest")
            })?;
        blobs.push((digest, descriptor["size"].as_u64().unwrap_or(0)));
    }
    let missing: Vec<(Digest, u64)> = blobs
        .into_iter()
        .filter(|(d, _)| !store.content.has(d))
        .collect();
    pulled.bytes += fetch_all(store, session, &missing)?;
    pulled.fetched += missing.len();
    Ok(())
}

/// A manifest's bytes and media type.
pub(super) fn manifest(session: &Session, reference: &str) -> Result<(Vec<u8>, String)> {
    let what = format!("manifest {reference}");
    let url = session.url(&format!("manifests/{reference}"));
    let accept = MANIFEST_TYPES.join(", ");
    let response = session.send(&what, &|http| http.get(&url).header(ACCEPT, &accept))?;
    if !response.status().is_success() {
        return Err(session.status_error(&what, response));
    }
    let header_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
    let mut bytes = Vec::new();
    response
        .take(MANIFEST_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| session.failed(&what, e))?;
    if bytes.len() as u64 > MANIFEST_LIMIT {
        return Err(session.failed(&what, "larger than 4 MiB"));
    }
    let body_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned));
    let media_type = body_type
        .or(header_type)
        .unwrap_or_else(|| image::OCI_MANIFEST.to_owned());
    Ok((bytes, media_type))
}

/// The index entries `wanted` names ([`image::runs`]), in the index's
/// order for [`Platforms::All`], else in `wanted`'s; a wanted platform the
/// index lacks is an error.
fn choose(
    session: &Session,
    entries: &[oci_spec::image::Descriptor],
    wanted: &Platforms,
) -> Result<Vec<oci_spec::image::Descriptor>> {
    let platforms = match wanted {
        Platforms::All => {
            return Ok(entries
                .iter()
                .filter(|e| image::index::is_platform_image(e))
                .cloned()
                .collect());
        }
        Platforms::These(platforms) => platforms,
    };
    let mut chosen: Vec<oci_spec::image::Descriptor> = Vec::new();
    for platform in platforms {
        let entry = entries
            .iter()
            .find(|e| {
                e.platform()
                    .as_ref()
                    .is_some_and(|p| image::runs(p, platform))
            })
            .ok_or_else(|| {
                let wanted = kiln_frontend::platform::format(platform);
                session.failed("choosing a platform", format!("no {wanted} image"))
            })?;
        if !chosen.iter().any(|c| c.digest() == entry.digest()) {
            chosen.push(entry.clone());
        }
    }
    Ok(chosen)
}

/// Fetches `blobs` into the store, up to [`PARALLEL`] at once; the bytes
/// fetched.
pub(super) fn fetch_all(store: &Store, session: &Session, blobs: &[(Digest, u64)]) -> Result<u64> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<Result<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PARALLEL.min(blobs.len()))
            .map(|_| {
                scope.spawn(|| -> Result<u64> {
                    let mut total = 0;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((digest, _)) = blobs.get(i) else {
                            return Ok(total);
                        };
                        total += fetch(store, session, digest)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(session.failed("fetching", "a fetch thread panicked")))
            })
            .collect()
    });
    results.into_iter().sum()
}

/// One blob, streamed into the store and verified there.
fn fetch(store: &Store, session: &Session, digest: &Digest) -> Result<u64> {
    let what = format!("blob {digest}");
    let url = session.url(&format!("blobs/{digest}"));
    let mut response = session.send(&what, &|http| http.get(&url))?;
    if !response.status().is_success() {
        return Err(session.status_error(&what, response));
    }
    let mut writer = store.content.writer()?;
    let copied = std::io::copy(&mut response, &mut writer).map_err(|e| session.failed(&what, e))?;
    // The store verifies the digest and keeps nothing that does not match.
    writer
        .commit(Some(digest))
        .map_err(|e| session.failed(&what, e))?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_from_flags() {
        let p = |t: &str| kiln_frontend::platform::parse(t).unwrap();
        assert_eq!(
            Platforms::parse("linux/amd64, linux/arm64/v8", false, None),
            Ok(Platforms::These(vec![p("linux/amd64"), p("linux/arm64")]))
        );
        assert_eq!(Platforms::parse("", true, None), Ok(Platforms::All));
        assert_eq!(
            Platforms::parse("", false, Some(&p("linux/arm64"))),
            Ok(Platforms::These(vec![p("linux/arm64")]))
        );
        assert!(
            Platforms::parse("linux/amd64", true, None)
                .unwrap_err()
                .contains("exclude each other")
        );
        assert!(
            Platforms::parse("linux/amd64,", false, None)
                .unwrap_err()
                .starts_with("--platform")
        );
        let many = vec!["linux/amd64"; 300].join(",");
        assert!(
            Platforms::parse(&many, false, None)
                .unwrap_err()
                .contains("(the limit)")
        );
        assert_eq!(
            Platforms::parse("linux/arm64,linux/amd64", false, None)
                .unwrap()
                .text(),
            "linux/arm64,linux/amd64"
        );
    }
}
