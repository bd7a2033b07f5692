//! The image commands: load, import, save, images, inspect, tag, rmi,
//! prune, du, workers — each once, on a [`Backend`]: the store here or
//! kilnd.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use kiln_image::archive::Format;
use kiln_image::images::{self, Usage};
use kiln_proto::ops::v1::Platform;

use crate::backend::Backend;

#[derive(Args)]
pub(crate) struct Load {
    /// The archive: a docker-archive or an OCI layout tar (plain, gzip or zstd).
    #[arg(short = 'i', long = "input")]
    input: PathBuf,
    /// Print only the names loaded.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub(crate) struct Import {
    /// A root filesystem tarball (plain, gzip or zstd).
    file: PathBuf,
    /// The image name, e.g. `base:busybox`.
    name: String,
    /// The platform the files are for (`os/arch[/variant]`, e.g.
    /// `linux/arm64`), written into the image's config; default: this
    /// machine's.
    #[arg(long, value_parser = kiln_frontend::platform::parse)]
    platform: Option<Platform>,
}

#[derive(Args)]
pub(crate) struct Save {
    /// Write to this file.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
    format: SaveFormat,
    /// The platform a docker-archive takes of a multi-platform image
    /// (`os/arch`; default this machine's); an OCI layout keeps them all.
    #[arg(long)]
    platform: Option<String>,
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SaveFormat {
    /// docker-archive, as `docker save` writes it.
    Docker,
    /// OCI image layout.
    Oci,
}

#[derive(Args)]
pub(crate) struct List {
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    /// Print only image IDs.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Args)]
pub(crate) struct Inspect {
    #[arg(required = true)]
    names: Vec<String>,
    /// Of a multi-platform image, the platform to describe (`os/arch`);
    /// default this machine's, else the first in the store.
    #[arg(long)]
    platform: Option<String>,
}

#[derive(Args)]
pub(crate) struct Tag {
    source: String,
    target: String,
}

#[derive(Args)]
pub(crate) struct Rmi {
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Args)]
pub(crate) struct Prune {
    /// Also empty the unpacked layers and every RUN cache mount (the next build starts cold).
    #[arg(short, long)]
    all: bool,
    /// Keep this much, least recently used goes first (e.g. 10GB, 512MiB).
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
}

fn stdout(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

impl Load {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        let (tags, untagged) = backend.load(&self.input)?;
        self.print(&tags, &untagged)
    }

    fn print(&self, tags: &[String], untagged: &[String]) -> Result<()> {
        let mut out = String::new();
        for tag in tags {
            if self.quiet {
                out.push_str(&format!("{}\n", kiln_image::image::familiar(tag)));
            } else {
                out.push_str(&format!(
                    "Loaded image: {}\n",
                    kiln_image::image::familiar(tag)
                ));
            }
        }
        for digest in untagged {
            out.push_str(&format!("Loaded image ID: {digest}\n"));
        }
        stdout(&out)
    }
}

impl Import {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        let digest = backend.import(
            &self.file,
            &self.name,
            source_date_epoch()?,
            self.platform.as_ref(),
        )?;
        stdout(&format!("{digest}\n"))
    }
}

/// `SOURCE_DATE_EPOCH`, when set, fixes created times.
fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => {
            Ok(Some(v.parse().with_context(|| {
                format!("SOURCE_DATE_EPOCH={v:?} is not a number")
            })?))
        }
        _ => Ok(None),
    }
}

impl Save {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        let format = match self.format {
            SaveFormat::Docker => Format::Docker,
            SaveFormat::Oci => Format::Oci,
        };
        let notes = backend.save(self.names, format, self.platform.as_deref(), &self.output)?;
        for note in notes {
            eprintln!("{note}");
        }
        Ok(())
    }
}

impl List {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        let rows = backend.list()?;
        self.print(rows)
    }

    fn print(self, rows: Vec<images::ImageSummary>) -> Result<()> {
        if self.quiet {
            let ids: Vec<String> = rows.iter().map(|r| format!("{}\n", &r.id[7..19])).collect();
            return stdout(&ids.concat());
        }
        if let ListFormat::Json = self.format {
            return stdout(&(serde_json::to_string_pretty(&rows)? + "\n"));
        }
        let now = kiln_image::image::now();
        // A multi-platform image is one row (its index's ID, the size of
        // the platforms here), its platforms listed last.
        let table: Vec<[String; 6]> = rows
            .iter()
            .map(|r| {
                [
                    r.repository.clone(),
                    r.tag.clone(),
                    r.id[7..19].to_owned(),
                    ago(now, r.created),
                    human(r.size),
                    r.platforms.join(","),
                ]
            })
            .collect();
        stdout(&render(
            [
                "REPOSITORY",
                "TAG",
                "IMAGE ID",
                "CREATED",
                "SIZE",
                "PLATFORMS",
            ],
            &table,
        ))
    }
}

impl Inspect {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        stdout(&(backend.inspect(self.names, self.platform.as_deref())? + "\n"))
    }
}

impl Tag {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        backend.tag(&self.source, &self.target)
    }
}

impl Rmi {
    /// Removes each name (the name untagged, the digests deleted), going
    /// on after a failure, as `docker rmi` does.
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        let mut failed = false;
        for name in &self.names {
            match backend.remove(name) {
                Ok((untagged, deleted)) => {
                    let mut out = format!("Untagged: {untagged}\n");
                    for d in &deleted {
                        out.push_str(&format!("Deleted: {d}\n"));
                    }
                    stdout(&out)?;
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
        }
        if failed {
            bail!("some images were not removed");
        }
        Ok(())
    }
}

impl Prune {
    pub(crate) fn run(self, backend: &mut dyn Backend) -> Result<()> {
        let keep = self.keep_storage.as_deref().map(parse_size).transpose()?;
        let (deleted, reclaimed) = backend.prune(self.all, keep)?;
        print_pruned(deleted.into_iter(), reclaimed)
    }
}

fn print_pruned(deleted: impl Iterator<Item = String>, reclaimed: u64) -> Result<()> {
    let mut out = String::new();
    for d in deleted {
        out.push_str(&format!("Deleted: {d}\n"));
    }
    out.push_str(&format!("Total reclaimed space: {}\n", human(reclaimed)));
    stdout(&out)
}

pub(crate) fn du(backend: &mut dyn Backend) -> Result<()> {
    print_usage(&backend.disk_usage()?)
}

pub(crate) fn workers(backend: &mut dyn Backend) -> Result<()> {
    print_workers(&backend.workers()?)
}

fn print_workers(workers: &[kiln_proto::control::v1::Worker]) -> Result<()> {
    let rows: Vec<[String; 7]> = workers
        .iter()
        .map(|w| {
            [
                w.id.clone(),
                w.platform.clone(),
                if w.emulated.is_empty() {
                    "-".to_owned()
                } else {
                    w.emulated.join(",")
                },
                w.parallelism.to_string(),
                w.running.to_string(),
                w.steps_run.to_string(),
                // A draining worker finishes its steps and takes no new ones.
                if w.draining { "draining" } else { "ready" }.to_owned(),
            ]
        })
        .collect();
    stdout(&render(
        [
            "ID",
            "PLATFORM",
            "EMULATED",
            "PARALLELISM",
            "RUNNING",
            "STEPS",
            "STATUS",
        ],
        &rows,
    ))
}

fn print_usage(u: &Usage) -> Result<()> {
    let rows = [
        ["Images".to_owned(), human(u.images), "0B".to_owned()],
        ["Unused blobs".to_owned(), human(u.unused), human(u.unused)],
        ["Snapshots".to_owned(), human(u.snapshots), "0B".to_owned()],
        [
            "Cache mounts".to_owned(),
            human(u.cache_mounts),
            "0B".to_owned(),
        ],
        ["Metadata".to_owned(), human(u.metadata), "0B".to_owned()],
        ["Total".to_owned(), human(u.total()), human(u.unused)],
    ];
    stdout(&render(["TYPE", "SIZE", "RECLAIMABLE"], &rows))
}

/// Left-aligned columns, three spaces apart, as docker prints them.
fn render<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Docker's sizes: decimal units, three significant digits (`5.2MB`).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
            + UNITS[unit]
    }
}

/// `10GB`, `512MiB`, `1.5g`, `1000000`.
fn parse_size(text: &str) -> Result<u64> {
    kiln_image::images::parse_size(text).context("--keep-storage")
}

/// `3 hours ago`, as docker prints creation times.
fn ago(now: u64, then: u64) -> String {
    if then == 0 {
        return "N/A".to_owned();
    }
    let secs = now.saturating_sub(then);
    let (n, unit) = match secs {
        0..=59 => return "Less than a minute ago".to_owned(),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=1_209_599 => (secs / 86_400, "day"),
        1_209_600..=5_183_999 => (secs / 604_800, "week"),
        5_184_000..=31_535_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    if n == 1 {
        format!(
            "{} {unit} ago",
            if unit == "hour" { "About an" } else { "1" }
        )
    } else {
        format!("{n} {unit}s ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human(999), "999B");
        assert_eq!(human(5_234_567), "5.235MB");
        assert_eq!(human(1_000_000_000), "1GB");
        assert_eq!(parse_size("10GB").unwrap(), 10_000_000_000);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert!(parse_size("lots").is_err());
        assert_eq!(ago(10_000, 10_000 - 7200), "2 hours ago");
        assert_eq!(ago(10_000, 0), "N/A");
    }
}
