//! Files to and from kilnd: archives (`save`, `load`, `import`) and a
//! build's file outputs (`export`), streamed in chunks.

use std::io::Write;
use std::path::Path;

use kiln_proto::control::v1 as pb;
use kiln_proto::ops::v1::Platform;

use super::{Client, ClientError, Result};
use kiln_image::output::{Dest, Output};

/// Files go to kilnd in chunks of this size.
const CHUNK: usize = 1 << 20;

fn file_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ClientError {
    let path = path.to_owned();
    move |source| ClientError::File { what, path, source }
}

impl Client {
    /// Writes the archive kilnd streams into `output`.
    pub fn save(&mut self, names: Vec<String>, format: &str, output: &Path) -> Result<()> {
        self.save_platform(names, format, "", output)
    }

    /// [`Client::save`]; a docker-archive takes `platform`'s image of a
    /// multi-platform image (`os/arch`; empty: kilnd's).
    pub fn save_platform(
        &mut self,
        names: Vec<String>,
        format: &str,
        platform: &str,
        output: &Path,
    ) -> Result<()> {
        let request = pb::SaveRequest {
            names,
            format: format.to_owned(),
            platform: platform.to_owned(),
        };
        let (runtime, mut client) = self.parts();
        let tmp = runtime.block_on(async {
            let stream = client.save(request).await?.into_inner();
            receive_file(stream, output).await
        })?;
        tmp.persist(output)
            .map_err(|e| file_error("writing", output)(e.error))?;
        Ok(())
    }

    /// A built image as a file output (`-o type=docker|oci|tar|local`),
    /// named `name` in an archive; written as the embedded build writes
    /// it (a file's mode is 0666 less the umask, as docker's).
    pub fn export(&mut self, manifest: &str, name: Option<&str>, output: &Output) -> Result<()> {
        // A directory (`type=local`, `type=oci,tar=false`): the archive,
        // received into a temporary file first, unpacked there.
        let (kind, dest) = match output {
            Output::Local(dir) => ("tar", Dest::Dir(dir.clone())),
            Output::Docker(d) | Output::Oci(d) | Output::Tar(d) => (output.kind(), d.clone()),
            Output::Image { .. } | Output::CacheOnly => return Ok(()),
        };
        let request = pb::ExportRequest {
            manifest: manifest.to_owned(),
            kind: kind.to_owned(),
            name: name.unwrap_or_default().to_owned(),
        };
        let (runtime, mut client) = self.parts();
        let place = match &dest {
            Dest::File(path) => path.clone(),
            Dest::Dir(_) => std::env::temp_dir().join("kiln-export"),
            Dest::Stdout => {
                return runtime.block_on(async {
                    let stream = client.export(request).await?.into_inner();
                    receive_into(stream, &mut std::io::stdout().lock(), Path::new("-")).await
                });
            }
        };
        let tmp = runtime.block_on(async {
            let stream = client.export(request).await?.into_inner();
            receive_file(stream, &place).await
        })?;
        if let Dest::Dir(dir) = &dest {
            let file = tmp.reopen().map_err(file_error("reading", tmp.path()))?;
            // kilnd's archive: a tree, written beneath `dir` only.
            kiln_image::output::unpack_dir(file, dir).map_err(ClientError::Unpack)?;
            return Ok(());
        }
        tmp.persist(&place)
            .map_err(|e| file_error("writing", &place)(e.error))?;
        Ok(())
    }

    /// Streams the archive at `input` to kilnd; the names tagged and the
    /// digests of untagged images.
    pub fn load(&mut self, input: &Path) -> Result<(Vec<String>, Vec<String>)> {
        let (chunks, reader) = file_chunks(input, |data| pb::DataChunk { data })?;
        let (runtime, mut client) = self.parts();
        let response = runtime.block_on(client.load(chunks));
        read_fully(input, reader)?;
        let r = response?.into_inner();
        Ok((r.tags, r.untagged))
    }

    /// `kiln import`: the tarball streamed to kilnd, as an image for
    /// `platform` (kilnd's when `None`); the manifest digest.
    pub fn import(
        &mut self,
        file: &Path,
        name: &str,
        created: Option<u64>,
        platform: Option<&Platform>,
    ) -> Result<String> {
        let name = name.to_owned();
        let platform = platform.map(kiln_frontend::platform::format);
        let (chunks, reader) = file_chunks(file, move |data| pb::ImportChunk {
            name: name.clone(),
            data,
            created,
            platform: platform.clone().unwrap_or_default(),
        })?;
        let (runtime, mut client) = self.parts();
        let response = runtime.block_on(client.import(chunks));
        read_fully(file, reader)?;
        Ok(response?.into_inner().digest)
    }
}

/// A stream of chunks into a temporary file beside `dest` (no half-written
/// file under its name; the caller persists it). Made 0666 less the
/// umask, as a file the embedded build writes: a temporary file's own
/// 0600 would stay after the rename.
async fn receive_file(
    stream: tonic::Streaming<pb::DataChunk>,
    dest: &Path,
) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
    let mut tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(file_error("creating a file in", dir))?;
    receive_into(stream, &mut tmp, dest).await?;
    Ok(tmp)
}

/// Writes every chunk of `stream` to `out` (`dest` names it in errors).
pub(super) async fn receive_into(
    mut stream: tonic::Streaming<pb::DataChunk>,
    out: &mut impl Write,
    dest: &Path,
) -> Result<()> {
    while let Some(chunk) = stream.message().await? {
        out.write_all(&chunk.data)
            .map_err(file_error("writing", dest))?;
    }
    out.flush().map_err(file_error("writing", dest))
}

type Reader = std::thread::JoinHandle<std::io::Result<()>>;

/// A file as a stream of messages `make` wraps its chunks in, read on a
/// thread of its own; join the thread with [`read_fully`].
pub(super) fn file_chunks<M: Send + 'static>(
    path: &Path,
    make: impl Fn(Vec<u8>) -> M + Send + 'static,
) -> Result<(tokio_stream::wrappers::ReceiverStream<M>, Reader)> {
    let mut file = std::fs::File::open(path).map_err(file_error("opening", path))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<M>(8);
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)?;
            // kilnd hung up: its answer says why.
            if n == 0 || tx.blocking_send(make(buf[..n].to_vec())).is_err() {
                return Ok(());
            }
        }
    });
    Ok((tokio_stream::wrappers::ReceiverStream::new(rx), reader))
}

pub(super) fn read_fully(path: &Path, reader: Reader) -> Result<()> {
    match reader.join() {
        Ok(Err(e)) => Err(file_error("reading", path)(e)),
        _ => Ok(()),
    }
}
