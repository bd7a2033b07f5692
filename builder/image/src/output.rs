//! Build outputs (`-o/--output`, buildctl's syntax): the image store, an
//! OCI or docker archive, the final root filesystem as a directory or a tar.
//! An archive goes to a file or, with `dest=-` (or `-o -`), to standard
//! output, as buildx writes it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_cache::{Digest, Store};
use kiln_worker::layer::{Whiteouts, unpack_with};

use crate::archive::{Format, save_targets, save_targets_to_file};
use crate::image::{self, ImageError, Result};

/// One `-o` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The image store: tagged with `-t` and `name=`, then pushed to the
    /// names' registries with `push=true` (`type=registry`, `--push`).
    /// `type=docker` without `dest` (`--load`) is this too: kiln's store
    /// is where buildx would load into docker's.
    Image { names: Vec<String>, push: bool },
    /// `type=cacheonly`: nothing but the build cache (`--cache-to`);
    /// no name is tagged.
    CacheOnly,
    /// A docker-archive (`docker load` reads it).
    Docker(Dest),
    /// An OCI layout tar.
    Oci(Dest),
    /// The final root filesystem in a directory.
    Local(PathBuf),
    /// The final root filesystem as a tar.
    Tar(Dest),
}

/// Where an archive output is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    File(PathBuf),
    /// `dest=-`.
    Stdout,
    /// `tar=false` of an OCI output: the layout itself (`oci-layout`,
    /// `index.json`, `blobs/`) in this directory, as BuildKit writes it.
    Dir(PathBuf),
}

impl Dest {
    fn new(path: PathBuf) -> Self {
        if path.as_os_str() == "-" {
            Self::Stdout
        } else {
            Self::File(path)
        }
    }
}

/// Whether an `-o` value says `rewrite-timestamp=` (`Some(true|false)`).
/// kiln clamps every mtime in the layers a build makes to
/// `SOURCE_DATE_EPOCH` when it is set — what BuildKit does only with
/// `rewrite-timestamp=true` — and leaves the base image's as they are, as
/// BuildKit does; `false` cannot turn that off.
pub fn rewrites_timestamps(spec: &str) -> Option<bool> {
    spec.split(',').find_map(|f| match f {
        "rewrite-timestamp=true" => Some(true),
        "rewrite-timestamp=false" => Some(false),
        _ => None,
    })
}

impl Output {
    /// Parses `type=…[,dest=…]`; a bare path means `type=local,dest=PATH`
    /// and a bare `-` a tar on standard output, as `docker build -o` takes
    /// them. As buildx: `tar` and `oci` without `dest` go to standard output,
    /// `local` never does; `docker` without `dest` loads the image (here:
    /// into the store), `registry` is `image` with `push=true`.
    pub fn parse(spec: &str) -> std::result::Result<Self, String> {
        if spec == "-" {
            return Ok(Self::Tar(Dest::Stdout));
        }
        if !spec.contains('=') {
            return Ok(Self::Local(PathBuf::from(spec)));
        }
        let mut kind = None;
        let mut dest = None;
        let mut names = Vec::new();
        let mut push = None;
        let mut tar = true;
        for field in spec.split(',') {
            match field.split_once('=') {
                Some(("type", t)) => kind = Some(t.to_owned()),
                Some(("dest", d)) => dest = Some(PathBuf::from(d)),
                Some(("name", n)) => names.push(n.to_owned()),
                Some(("tar", t)) => {
                    tar = match t {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("--output {spec:?}: tar is true or false")),
                    };
                }
                Some(("push", p)) => {
                    push = Some(match p {
                        "true" => true,
                        "false" => false,
                        _ => return Err(format!("--output {spec:?}: push is true or false")),
                    });
                }
                // Read by the build (`LayerCompression`), for every output.
                Some((
                    "compression" | "compression-level" | "oci-mediatypes" | "force-compression",
                    _,
                )) => {}
                // Read by the build (`Annotation::parse_attribute`).
                Some((key, _)) if key.starts_with("annotation") => {}
                // What kiln always does with `SOURCE_DATE_EPOCH` (see
                // [`rewrites_timestamps`]).
                Some(("rewrite-timestamp", "true" | "false")) => {}
                Some(("rewrite-timestamp", _)) => {
                    return Err(format!(
                        "--output {spec:?}: rewrite-timestamp is true or false"
                    ));
                }
                _ => return Err(format!("--output {spec:?}: unknown field {field:?}")),
            }
        }
        let need_dest = |kind: &str| {
            dest.clone()
                .ok_or_else(|| format!("--output {spec:?}: type={kind} needs dest=PATH"))
        };
        let file_or_stdout = || Dest::new(dest.clone().unwrap_or_else(|| PathBuf::from("-")));
        if !tar {
            return match kind.as_deref() {
                Some("oci") => match need_dest("oci")? {
                    d if d.as_os_str() == "-" => Err(format!(
                        "--output {spec:?}: tar=false writes a directory, not standard output"
                    )),
                    d => Ok(Self::Oci(Dest::Dir(d))),
                },
                _ => Err(format!(
                    "--output {spec:?}: tar=false is for type=oci (a layout in a directory)"
                )),
            };
        }
        match kind.as_deref() {
            Some("image") => Ok(Self::Image {
                names,
                push: push.unwrap_or(false),
            }),
            Some("registry") if push == Some(false) => Err(format!(
                "--output {spec:?}: type=registry always pushes (type=image,push=false does not)"
            )),
            Some("registry") => Ok(Self::Image { names, push: true }),
            Some("docker") => Ok(match dest {
                Some(dest) => Self::Docker(Dest::new(dest)),
                None => Self::Image {
                    names,
                    push: push.unwrap_or(false),
                },
            }),
            Some("cacheonly") => Ok(Self::CacheOnly),
            Some("oci") => Ok(Self::Oci(file_or_stdout())),
            Some("local") => match need_dest("local")? {
                d if d.as_os_str() == "-" => Err(format!(
                    "--output {spec:?}: dest cannot be stdout for local exporter"
                )),
                d => Ok(Self::Local(d)),
            },
            Some("tar") => Ok(Self::Tar(file_or_stdout())),
            Some(other) => Err(format!(
                "--output {spec:?}: unknown type {other:?} \
                 (image, registry, docker, oci, local, tar, cacheonly)"
            )),
            None => Err(format!("--output {spec:?}: no type=")),
        }
    }

    /// The output's type, as `type=` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Image { .. } => "image",
            Self::CacheOnly => "cacheonly",
            Self::Docker(_) => "docker",
            Self::Oci(_) => "oci",
            Self::Local(_) => "local",
            Self::Tar(_) => "tar",
        }
    }

    /// Whether it is written to standard output.
    pub fn to_stdout(&self) -> bool {
        matches!(
            self,
            Self::Docker(Dest::Stdout) | Self::Oci(Dest::Stdout) | Self::Tar(Dest::Stdout)
        )
    }
}

/// Writes the image `manifest` names (named `name`, a full reference, when
/// tagged) to `output`. `manifest` may be a multi-platform image's index:
/// an OCI output keeps it (every platform), a docker-archive takes the
/// host's image, a root filesystem is one directory per platform.
pub fn export(store: &Store, manifest: &Digest, name: Option<&str>, output: &Output) -> Result<()> {
    match output {
        // Tagging and pushing are the caller's (they need the tags).
        Output::Image { .. } | Output::CacheOnly => Ok(()),
        Output::Docker(dest) => archive(store, name, manifest, Format::Docker, dest),
        Output::Oci(dest) => archive(store, name, manifest, Format::Oci, dest),
        // A tar not bundled is the directory itself (parse makes none).
        Output::Local(dest) | Output::Tar(Dest::Dir(dest)) => rootfs_each(store, manifest, dest),
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
            rootfs_each(store, manifest, tmp.path())?;
            match dest {
                Dest::File(path) => {
                    let file = fs::File::create(path).map_err(io_error("creating", path))?;
                    tar_dir(tmp.path(), file, path)
                }
                Dest::Stdout => tar_dir(tmp.path(), std::io::stdout().lock(), Path::new("-")),
                Dest::Dir(_) => Ok(()),
            }
        }
    }
}

/// The image `target` names (a manifest or an index) as an archive of
/// `format`, named `name` when tagged.
pub fn archive(
    store: &Store,
    name: Option<&str>,
    target: &Digest,
    format: Format,
    dest: &Dest,
) -> Result<()> {
    let targets = [(name.unwrap_or_default().to_owned(), target.clone())];
    match dest {
        Dest::File(path) => save_targets_to_file(store, &targets, format, None, path).map(drop),
        Dest::Dir(dir) => {
            // The archive streamed through a socket pair into the
            // unpacker, which writes nothing outside `dir`: the layout is
            // made as the tar's reader would make it, without the tar.
            let (mut writer, reader) = std::os::unix::net::UnixStream::pair()
                .map_err(io_error("creating a socket pair for", dir))?;
            std::thread::scope(|scope| {
                let saving = scope.spawn(move || {
                    let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut writer);
                    save_targets(store, &targets, format, None, &mut out)?;
                    out.flush().map_err(io_error("writing", Path::new("-")))
                });
                let unpacked = unpack_dir(reader, dir);
                let saved = saving.join().unwrap_or_else(|_| {
                    Err(ImageError::Archive {
                        path: dir.clone(),
                        reason: "the thread writing the layout panicked".to_owned(),
                    })
                });
                // The writer's own error is the cause when both failed.
                saved.and(unpacked)
            })
        }
        Dest::Stdout => {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            save_targets(store, &targets, format, None, &mut out)?;
            out.flush().map_err(io_error("writing", Path::new("-")))
        }
    }
}

/// The archive `reader` holds unpacked into `dir` (created when missing),
/// nothing written outside it.
pub fn unpack_dir(reader: impl std::io::Read, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_error("creating", dir))?;
    unpack_with(std::io::BufReader::new(reader), dir, Whiteouts::Plain).map_err(|e| {
        ImageError::Archive {
            path: dir.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(())
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io {
        action,
        path,
        source,
    }
}

/// The root filesystem of what `digest` names in `dest`: a manifest's
/// in `dest` itself, an index's platforms' each in a directory of its own
/// named as BuildKit names them (`linux_amd64`, `linux_arm_v7`).
fn rootfs_each(store: &Store, digest: &Digest, dest: &Path) -> Result<()> {
    if !image::is_index(store, digest)? {
        return rootfs(
            store,
            &image::read_image(store, digest, &image::host_platform())?,
            dest,
        );
    }
    for present in image::index::present_images(store, digest)? {
        let Some(platform) = present.parsed() else {
            continue;
        };
        let img = present.image;
        let dir = dest.join(kiln_frontend::platform::format(&platform).replace('/', "_"));
        rootfs(store, &img, &dir)?;
    }
    Ok(())
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
        let unpacked = crate::blobs::with_tar(store, &layer.blob, |reader| {
            unpack_with(reader, dest, Whiteouts::Apply).map_err(|e| ImageError::Archive {
                path: dest.to_owned(),
                reason: format!("layer {}: {e}", layer.blob),
            })
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

/// Writes a tar of `dir` to `out` (`dest` names it in errors).
fn tar_dir(dir: &Path, out: impl Write, dest: &Path) -> Result<()> {
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .map_err(io_error("writing", dest))?;
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_error("writing", dest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            Output::parse("type=docker,dest=a.tar"),
            Ok(Output::Docker(Dest::File("a.tar".into())))
        );
        assert_eq!(
            Output::parse("type=oci,dest=o.tar,compression=zstd"),
            Ok(Output::Oci(Dest::File("o.tar".into())))
        );
        for stdout in ["-", "type=tar", "type=tar,dest=-", "type=oci"] {
            assert!(Output::parse(stdout).unwrap().to_stdout(), "{stdout}");
        }
        assert_eq!(
            Output::parse("type=docker,dest=-"),
            Ok(Output::Docker(Dest::Stdout))
        );
        assert!(
            Output::parse("type=local,dest=-")
                .unwrap_err()
                .contains("dest cannot be stdout for local exporter")
        );
        assert_eq!(
            Output::parse("type=docker"),
            Ok(Output::Image {
                names: vec![],
                push: false
            }),
            "--load: into the store"
        );
        assert_eq!(
            Output::parse("type=registry,name=r/x"),
            Ok(Output::Image {
                names: vec!["r/x".into()],
                push: true
            })
        );
        assert!(Output::parse("type=registry,push=false").is_err());
        assert_eq!(Output::parse("type=cacheonly"), Ok(Output::CacheOnly));
        assert_eq!(
            Output::parse("type=oci,dest=layout,tar=false"),
            Ok(Output::Oci(Dest::Dir("layout".into())))
        );
        for refused in [
            "type=oci,tar=false",
            "type=oci,dest=-,tar=false",
            "type=docker,dest=d,tar=false",
            "type=oci,dest=o,tar=maybe",
        ] {
            assert!(Output::parse(refused).is_err(), "{refused}");
        }
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
