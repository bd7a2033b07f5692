//! `kiln import`: a one-layer image from a root filesystem tarball
//! (plain, gzip or zstd).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use kiln_cache::{Digest, Store};
use kiln_proto::ops::v1::Platform;

use crate::image::config::{HistoryEntry, ImageConfiguration, RootFs, rfc3339};
use crate::image::{self, ImageError, OCI_MANIFEST, Result, canonical_json};
use kiln_worker::layer::compression::{Compression, decompressed};

/// Imports `path` as the image `name` and returns the manifest digest. The
/// layer is stored uncompressed (its digest is its diff ID); `created` is
/// the image's creation time (seconds since the epoch). The config says
/// `platform` (this machine's when `None`): what the files are for, which
/// kiln cannot tell from a tarball — a foreign root filesystem imported as
/// the host's would build, and then fail where it runs.
pub fn import(
    store: &Store,
    path: &Path,
    name: &str,
    created: u64,
    platform: Option<&Platform>,
) -> Result<Digest> {
    let full = image::normalize(name)?;
    let io = |action| {
        move |source| ImageError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let file = File::open(path).map_err(io("opening"))?;
    let mut writer = store.content.writer()?;
    std::io::copy(
        &mut decompressed(BufReader::with_capacity(1 << 20, file)).map_err(io("reading"))?,
        &mut writer,
    )
    .map_err(io("reading"))?;
    let layer = writer.commit(None)?;
    if let Err(reason) = check_tar(store, &layer.digest) {
        if layer.new {
            store.content.delete(&layer.digest)?;
        }
        return Err(ImageError::Archive {
            path: path.to_owned(),
            reason,
        });
    }
    let platform = platform
        .cloned()
        .unwrap_or_else(kiln_frontend::platform::host);
    let created = rfc3339(created);
    let config = ImageConfiguration {
        created: Some(created.clone()),
        architecture: platform.architecture,
        os: platform.os,
        variant: (!platform.variant.is_empty()).then_some(platform.variant),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer.digest.to_string()],
        },
        history: vec![HistoryEntry {
            created: Some(created),
            created_by: Some(format!(
                "kiln import {}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )),
            comment: Some("imported from a tarball".into()),
            ..HistoryEntry::default()
        }],
        ..ImageConfiguration::default()
    };
    let config_bytes = canonical_json(&config);
    let config_digest = store.content.write_bytes(&config_bytes)?;
    let layers = [(
        layer.digest,
        Compression::None.layer_media_type().to_owned(),
        layer.size,
    )];
    let (manifest, _) =
        image::write_manifest(store, (&config_digest, config_bytes.len() as u64), &layers)?;
    image::tag(store, &full, &manifest, OCI_MANIFEST)?;
    store.meta.flush()?;
    Ok(manifest)
}

/// The blob must be a tar archive (an empty one is fine).
fn check_tar(store: &Store, digest: &Digest) -> std::result::Result<(), String> {
    let file = store.content.open_blob(digest).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let mut entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    match entries.next() {
        Some(Err(e)) => Err(format!("not a tar archive: {e}")),
        _ => Ok(()),
    }
}
