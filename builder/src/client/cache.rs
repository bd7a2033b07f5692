//! `type=local` build caches through kilnd: the directory is on this
//! machine, and kilnd never reads a path a client names. An import packs
//! the cache into a layout tar and sends it first (ImportCache); an
//! export fetches the cache kilnd made in its store (Export, kind
//! "cache") and writes it into the directory under the index lock, as an
//! embedded build would.

use std::path::Path;

use kiln_proto::control::v1 as pb;
use kiln_registry::cache::{Backend, CacheSpec};
use kiln_solver::pipeline::{Level, Notice, Report, Request};

use super::files::{file_chunks, read_fully, receive_into};
use super::{Client, ClientError, Result};

fn notice(level: Level, text: String) -> Report {
    Report::Notice(Notice { level, text })
}

impl Client {
    /// Sends each `--cache-from type=local` cache to kilnd; as embedded, a
    /// cache that cannot be imported is a warning.
    pub(super) fn import_local_caches(
        &mut self,
        request: &Request,
        on_report: &mut dyn FnMut(Report),
    ) {
        for cache in &request.cache_imports {
            let Backend::Local {
                dir, tag, digest, ..
            } = &cache.backend
            else {
                continue;
            };
            let name = cache.name();
            on_report(match self.import_local(dir, tag, digest.as_deref()) {
                Ok(r) => notice(
                    Level::Info,
                    format!(
                        "importing cache from {name}: {} steps, {} cache mounts",
                        r.records, r.mounts
                    ),
                ),
                Err(e) => notice(Level::Warning, format!("importing cache from {name}: {e}")),
            });
        }
    }

    fn import_local(
        &mut self,
        dir: &Path,
        tag: &str,
        digest: Option<&str>,
    ) -> Result<pb::ImportCacheResponse> {
        let mut tmp = tempfile::NamedTempFile::new().map_err(|source| ClientError::File {
            what: "creating a temporary file for",
            path: dir.to_owned(),
            source,
        })?;
        kiln_registry::cache::pack_local(dir, tag, digest, tmp.as_file_mut())?;
        let (chunks, reader) = file_chunks(tmp.path(), |data| pb::DataChunk { data })?;
        let (runtime, mut client) = self.parts();
        let response = runtime.block_on(client.import_cache(chunks));
        read_fully(tmp.path(), reader)?;
        Ok(response?.into_inner())
    }

    /// Fetches each `--cache-to type=local` cache kilnd made (in the
    /// order `result.local_caches` names them) into its directory. A
    /// failure fails the build unless the cache says `ignore-error=true`.
    pub(super) fn export_local_caches(
        &mut self,
        request: &Request,
        result: &pb::BuildResult,
        on_report: &mut dyn FnMut(Report),
    ) -> Result<()> {
        let locals: Vec<&CacheSpec> = request
            .cache_exports
            .iter()
            .filter(|c| matches!(c.backend, Backend::Local { .. }))
            .collect();
        if locals.len() != result.local_caches.len() {
            return Err(ClientError::Protocol(format!(
                "kilnd made {} local caches where the build asked for {}",
                result.local_caches.len(),
                locals.len()
            )));
        }
        for (cache, manifest) in locals.into_iter().zip(&result.local_caches) {
            // None made (ignore-error=true): kilnd said why.
            if manifest.is_empty() {
                continue;
            }
            let name = cache.name();
            match self.export_local(cache, manifest) {
                Ok(()) => on_report(notice(
                    Level::Info,
                    format!("exporting cache to {name} done"),
                )),
                Err(e) if cache.ignore_error => on_report(notice(
                    Level::Warning,
                    format!("exporting cache to {name}: {e} (ignore-error=true)"),
                )),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn export_local(&mut self, cache: &CacheSpec, manifest: &str) -> Result<()> {
        let Backend::Local {
            dir, tag, reset, ..
        } = &cache.backend
        else {
            return Ok(());
        };
        let request = pb::ExportRequest {
            manifest: manifest.to_owned(),
            kind: "cache".to_owned(),
            name: String::new(),
        };
        let mut tmp = tempfile::tempfile().map_err(|source| ClientError::File {
            what: "creating a temporary file for",
            path: dir.clone(),
            source,
        })?;
        let (runtime, mut client) = self.parts();
        runtime.block_on(async {
            let stream = client.export(request).await?.into_inner();
            receive_into(stream, &mut tmp, dir).await
        })?;
        std::io::Seek::rewind(&mut tmp).map_err(|source| ClientError::File {
            what: "reading",
            path: dir.clone(),
            source,
        })?;
        kiln_registry::cache::receive_local_tar(&mut tmp, dir, tag, *reset)?;
        Ok(())
    }
}
