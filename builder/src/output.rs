//! Build outputs (`-o/--output`, buildctl's syntax): the image store, an
//! OCI or docker archive, the final root filesystem as a directory or a tar.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, Store};
use kiln_worker::layer::compression::decompressed;
use kiln_worker::layer::{Whiteouts, unpack_with};

use crate::archive::{Format, save_images_to_file};
use crate::image::{self, ImageError, Result};

/// One `-o` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The image store: tagged with `-t` and `name=`, then pushed to the
    /// names' registries with `push=true`.
    Image { names: Vec<String>, push: bool },
    /// A docker-archive file (`docker load` reads it).
    Docker(PathBuf),
    /// An OCI layout tar.
    Oci(PathBuf),
    /// The final root filesystem in a directory.
    Local(PathBuf),
    /// The final root filesystem as a tar file.
    Tar(PathBuf),
}

impl Output {
    /// Parses `type=…[,dest=…]`; a bare path means `type=local,dest=PATH`,
    /// as `docker build -o` takes it.
    pub fn parse(spec: &str) -> std::result::Result<Self, String> {
        if !spec.contains('=') {
            return Ok(Self::Local(PathBuf::from(spec)));
        }
        let mut kind = None;
        let mut dest = None;
        let mut names = Vec::new();
        let mut push = false;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", t)) => kind = Some(t.to_owned()),
                Some(("dest", d)) => dest = Some(PathBuf::from(d)),
                Some(("name", n)) => names.push(n.to_owned()),
                Some(("push", p)) => {
                    push = match p {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("--output {spec:?}: push is true or false")),
                    };
                }
                // Read by the build (`LayerCompression`), for every output.
                Some(("compression" | "compression-level", _)) => {}
                _ => return Err(format!("--output {spec:?}: unknown field {field:?}")),
            }
        }
        let need_dest = |kind: &str| {
            dest.clone()
                .ok_or_else(|| format!("--output {spec:?}: type={kind} needs dest=PATH"))
        };
        match kind.as_deref() {
            Some("image") => Ok(Self::Image { names, push }),
            Some("docker") => Ok(Self::Docker(need_dest("docker")?)),
            Some("oci") => Ok(Self::Oci(need_dest("oci")?)),
            Some("local") => Ok(Self::Local(need_dest("local")?)),
            Some("tar") => Ok(Self::Tar(need_dest("tar")?)),
            Some(other) => Err(format!(
                "--output {spec:?}: unknown type {other:?} (image, docker, oci, local, tar)"
            )),
            None => Err(format!("--output {spec:?}: no type=")),
        }
    }
}

/// Writes the image `manifest` names (named `name`, a full reference, when
/// tagged) to `output`.
pub fn export(store: &Store, manifest: &Digest, name: Option<&str>, output: &Output) -> Result<()> {
    let (os, arch) = image::host_platform();
    let img = || image::read_image(store, manifest, (&os, &arch));
    match output {
        // Tagging and pushing are the caller's (they need the tags).
        Output::Image { .. } => Ok(()),
        Output::Docker(dest) => save_images_to_file(
            store,
            &[(name.unwrap_or_default().to_owned(), img()?)],
            Format::Docker,
            dest,
        ),
        Output::Oci(dest) => save_images_to_file(
            store,
            &[(name.unwrap_or_default().to_owned(), img()?)],
            Format::Oci,
            dest,
        ),
        Output::Local(dest) => rootfs(store, &img()?, dest),
        Output::Tar(dest) => {
            // One directory per export: kilnd runs several builds at once.
            let tmp_root = store.root().join("tmp");
            fs::create_dir_all(&tmp_root).map_err(|source| ImageError::Io {
                action: "creating",
                path: tmp_root.clone(),
                source,
            })?;
            let tmp = tempfile::Builder::new()
                .prefix("rootfs-")
                .tempdir_in(&tmp_root)
                .map_err(|source| ImageError::Io {
                    action: "creating a directory in",
                    path: tmp_root.clone(),
                    source,
                })?;
            rootfs(store, &img()?, tmp.path()).and_then(|()| tar_dir(tmp.path(), dest))
        }
    }
}

/// Every layer, bottom first, applied into `dest` (beneath it: the
/// unpacker writes nothing outside), each checked against its diff ID.
fn rootfs(store: &Store, img: &image::Image, dest: &Path) -> Result<()> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dest).map_err(io("creating", dest))?;
    for layer in img.layer_pairs()? {
        let reader =
            decompressed(store.content.open_blob(&layer.blob)?).map_err(io("reading", dest))?;
        let unpacked =
            unpack_with(reader, dest, Whiteouts::Apply).map_err(|e| ImageError::Archive {
                path: dest.to_owned(),
                reason: format!("layer {}: {e}", layer.blob),
            })?;
        if unpacked.diff_id != layer.diff_id.to_string() {
            return Err(ImageError::DiffId {
                layer: layer.blob,
                claimed: layer.diff_id.to_string(),
                actual: unpacked.diff_id,
            });
        }
    }
    Ok(())
}

fn tar_dir(dir: &Path, dest: &Path) -> Result<()> {
    let io = |action| {
        let path = dest.to_owned();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    };
    let file = fs::File::create(dest).map_err(io("creating"))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir).map_err(io("writing"))?;
    tar.into_inner().map_err(io("writing"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            Output::parse("type=docker,dest=a.tar"),
            Ok(Output::Docker("a.tar".into()))
        );
        assert_eq!(
            Output::parse("type=oci,dest=o.tar,compression=zstd"),
            Ok(Output::Oci("o.tar".into()))
        );
        assert_eq!(
            Output::parse("type=image,name=x,push=true"),
            Ok(Output::Image {
                names: vec!["x".into()],
                push: true
            })
        );
        assert_eq!(Output::parse("out"), Ok(Output::Local("out".into())));
        assert!(
            Output::parse("type=local")
                .unwrap_err()
                .contains("needs dest")
        );
        assert!(
            Output::parse("type=s3,dest=x")
                .unwrap_err()
                .contains("unknown type")
        );
    }
}
