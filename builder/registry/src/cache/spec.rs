//! `--cache-to` / `--cache-from` values, parsed as buildx parses them
//! (<https://docs.docker.com/build/cache/backends/>): `type=T,key=value,…`,
//! or a bare reference (`user/app:cache`) for `type=registry,ref=…`.
//!
//! Attributes buildx documents that kiln has no use for are taken and
//! ignored (listed in [`IGNORED`]); any other is refused, naming the flag.

use std::path::PathBuf;

use kiln_image::compress::LayerCompression;

/// Which way a cache goes: the attributes differ (`dest=` exports, `src=`
/// imports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `--cache-from`.
    Import,
    /// `--cache-to`.
    Export,
}

/// Which steps an export holds (BuildKit's `mode=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// Only the steps whose layers are in the built image (buildx's default).
    #[default]
    Min,
    /// Every step of every stage the build ran.
    Max,
}

/// Where a cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `type=registry,ref=REF`: an OCI artifact in a registry (or, when
    /// imported, an image pushed with inline cache).
    Registry { reference: String },
    /// `type=local`: an OCI image layout in a directory (`dest=` or `src=`);
    /// `tag=` names the manifest in its `index.json` (default `latest`),
    /// `digest=` picks one by digest (imports).
    Local {
        dir: PathBuf,
        tag: String,
        digest: Option<String>,
        /// `reset=true`: after the export, blobs no manifest of the
        /// index references are removed (BuildKit's client does the same).
        reset: bool,
    },
    /// `type=inline`: the records in the image's config (exports only).
    Inline,
    /// `type=s3`: an S3 bucket.
    S3(S3Spec),
}

/// `type=s3`'s attributes, as BuildKit's s3 cache names them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct S3Spec {
    pub bucket: String,
    pub region: String,
    /// `endpoint_url=`: an S3-compatible server; unset: AWS's endpoint of
    /// the region.
    pub endpoint_url: Option<String>,
    /// `use_path_style=true`: `ENDPOINT/BUCKET/KEY`, not `BUCKET.ENDPOINT/KEY`.
    pub use_path_style: bool,
    /// `prefix=`: before both `blobs_prefix` and `manifests_prefix`.
    pub prefix: String,
    /// `name=`: the manifest names, `;`-separated (default `buildkit`).
    pub names: Vec<String>,
    pub blobs_prefix: String,
    pub manifests_prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

impl std::fmt::Debug for S3Spec {
    /// Never prints the secret or the session token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Spec")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field("use_path_style", &self.use_path_style)
            .field("prefix", &self.prefix)
            .field("names", &self.names)
            .field("blobs_prefix", &self.blobs_prefix)
            .field("manifests_prefix", &self.manifests_prefix)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Spec {
    /// BuildKit's defaults: blobs under `blobs/`, manifests under
    /// `manifests/`, one manifest named `buildkit`.
    fn new() -> Self {
        Self {
            blobs_prefix: "blobs/".into(),
            manifests_prefix: "manifests/".into(),
            names: vec!["buildkit".into()],
            ..Self::default()
        }
    }

    /// Fills what the value left unset from the AWS environment variables
    /// `env` gives (`AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), as buildx does. The
    /// CLI calls it with its own environment; kilnd never does: a client
    /// must not use kilnd's AWS identity.
    pub fn from_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if self.region.is_empty() {
            self.region = env("AWS_REGION").unwrap_or_default();
        }
        if self.access_key_id.is_empty() && self.secret_access_key.is_empty() {
            self.access_key_id = env("AWS_ACCESS_KEY_ID").unwrap_or_default();
            self.secret_access_key = env("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
            self.session_token = env("AWS_SESSION_TOKEN").unwrap_or_default();
        }
    }

    /// Whether the request carries credentials of its own.
    pub fn has_credentials(&self) -> bool {
        !self.access_key_id.is_empty() && !self.secret_access_key.is_empty()
    }
}

/// One `--cache-to` / `--cache-from` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSpec {
    pub backend: Backend,
    /// Exports: which steps go.
    pub mode: Mode,
    /// Exports: a failure is a warning, and the build succeeds.
    pub ignore_error: bool,
    /// Exports (kiln's own): the build's `RUN --mount=type=cache` contents
    /// go along.
    pub cache_mounts: bool,
    /// Exports: `compression=` / `compression-level=`; `None`: the build's.
    pub compression: Option<LayerCompression>,
}

/// Attributes buildx documents for some backend that kiln takes and
/// ignores: kiln's cache is always one OCI image manifest in OCI media
/// types (`oci-mediatypes`, `image-manifest`), layers already compressed
/// stay as they are (`force-compression`), S3 objects are written once
/// and never touched (`touch_refresh`), uploads go one at a time
/// (`upload_parallelism`), and the registry's TLS follows
/// `--insecure-registry` (`registry.insecure`).
pub const IGNORED: [&str; 6] = [
    "oci-mediatypes",
    "image-manifest",
    "force-compression",
    "touch_refresh",
    "upload_parallelism",
    "registry.insecure",
];

/// The backends buildx has that kiln does not (refused by name).
const UNSUPPORTED: [&str; 2] = ["gha", "azblob"];

type Result<T> = std::result::Result<T, String>;

impl CacheSpec {
    /// A value of `flag` (`--cache-to` or `--cache-from`), going `direction`.
    /// The errors name the flag and the value.
    pub fn parse(flag: &str, direction: Direction, spec: &str) -> Result<Self> {
        let bad = |why: String| format!("{flag} {spec}: {why}");
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(bad("empty".into()));
        }
        if !spec.contains('=') && !spec.contains(',') {
            // buildx: a bare value is a registry reference.
            return Ok(Self::plain(Backend::Registry {
                reference: spec.to_owned(),
            }));
        }
        let mut fields = Vec::new();
        let mut kind = None;
        for field in spec.split(',') {
            let (key, value) = field
                .split_once('=')
                .ok_or_else(|| bad(format!("{field:?} is not key=value")))?;
            let key = key.trim().to_ascii_lowercase();
            if key == "type" {
                kind = Some(value.trim().to_owned());
            } else {
                fields.push((key, value.to_owned()));
            }
        }
        let kind = kind.ok_or_else(|| bad("no type= (registry, local, inline or s3)".into()))?;
        let mut parsed = Attributes::new(flag, spec, direction, fields);
        let backend = match kind.as_str() {
            "registry" => Backend::Registry {
                reference: parsed.required("ref")?,
            },
            "local" => parsed.local()?,
            "inline" if direction == Direction::Import => {
                return Err(bad(
                    "type=inline exports only; import the image with --cache-from REF".into(),
                ));
            }
            "inline" => Backend::Inline,
            "s3" => Backend::S3(parsed.s3()?),
            k if UNSUPPORTED.contains(&k) => {
                return Err(bad(format!(
                    "kiln has no type={k} cache (registry, local, inline, s3)"
                )));
            }
            k => {
                return Err(bad(format!(
                    "unknown cache type {k:?} (registry, local, inline, s3)"
                )));
            }
        };
        let spec = parsed.common(backend)?;
        parsed.finish()?;
        Ok(spec)
    }

    fn plain(backend: Backend) -> Self {
        Self {
            backend,
            mode: Mode::Min,
            ignore_error: false,
            cache_mounts: false,
            compression: None,
        }
    }

    /// How the cache is named in notices: the reference, the directory,
    /// the bucket (never a credential).
    pub fn name(&self) -> String {
        match &self.backend {
            Backend::Registry { reference } => reference.clone(),
            Backend::Local { dir, .. } => format!("local {}", dir.display()),
            Backend::Inline => "inline".to_owned(),
            Backend::S3(s3) => format!("s3 bucket {}", s3.bucket),
        }
    }
}

/// The `key=value` fields of one value, taken one by one; what is left at
/// the end is unknown.
struct Attributes<'a> {
    flag: &'a str,
    spec: &'a str,
    direction: Direction,
    fields: Vec<(String, String)>,
}

impl<'a> Attributes<'a> {
    fn new(
        flag: &'a str,
        spec: &'a str,
        direction: Direction,
        fields: Vec<(String, String)>,
    ) -> Self {
        Self {
            flag,
            spec,
            direction,
            fields,
        }
    }

    fn bad(&self, why: impl std::fmt::Display) -> String {
        format!("{} {}: {why}", self.flag, self.spec)
    }

    /// The value of `key`, taken (the last one when given twice).
    fn take(&mut self, key: &str) -> Option<String> {
        let mut found = None;
        self.fields.retain(|(k, v)| {
            if k == key {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    fn required(&mut self, key: &str) -> Result<String> {
        match self.take(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(self.bad(format!("no {key}="))),
        }
    }

    fn boolean(&mut self, key: &str) -> Result<bool> {
        match self.take(key).as_deref() {
            None => Ok(false),
            Some("true" | "1" | "True" | "TRUE") => Ok(true),
            Some("false" | "0" | "False" | "FALSE") => Ok(false),
            Some(v) => Err(self.bad(format!("{key}={v}: expected true or false"))),
        }
    }

    fn local(&mut self) -> Result<Backend> {
        let dir = match self.direction {
            Direction::Export => self.required("dest")?,
            Direction::Import => self.required("src")?,
        };
        let tag = self.take("tag").unwrap_or_else(|| "latest".into());
        let digest = match self.direction {
            Direction::Import => self.take("digest").filter(|d| !d.is_empty()),
            Direction::Export => None,
        };
        if let Some(d) = &digest {
            d.parse::<kiln_cache::Digest>()
                .map_err(|e| self.bad(format!("digest={d}: {e}")))?;
        }
        if tag.is_empty() && digest.is_none() {
            return Err(self.bad("an empty tag= needs a digest="));
        }
        let reset = self.boolean("reset")?;
        Ok(Backend::Local {
            dir: PathBuf::from(dir),
            tag,
            digest,
            reset,
        })
    }

    fn s3(&mut self) -> Result<S3Spec> {
        let mut s3 = S3Spec::new();
        s3.bucket = self.required("bucket")?;
        // Empty: `$AWS_REGION` of the CLI's environment ([`S3Spec::from_env`]).
        s3.region = self.take("region").unwrap_or_default();
        s3.endpoint_url = self.take("endpoint_url").filter(|e| !e.is_empty());
        s3.use_path_style = self.boolean("use_path_style")?;
        s3.prefix = self.take("prefix").unwrap_or_default();
        if let Some(names) = self.take("name") {
            s3.names = names
                .split(';')
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if s3.names.is_empty() {
            return Err(self.bad("name= names no manifest"));
        }
        if let Some(p) = self.take("blobs_prefix") {
            s3.blobs_prefix = p;
        }
        if let Some(p) = self.take("manifests_prefix") {
            s3.manifests_prefix = p;
        }
        s3.access_key_id = self.take("access_key_id").unwrap_or_default();
        s3.secret_access_key = self.take("secret_access_key").unwrap_or_default();
        s3.session_token = self.take("session_token").unwrap_or_default();
        Ok(s3)
    }

    /// The attributes every backend takes.
    fn common(&mut self, backend: Backend) -> Result<CacheSpec> {
        // An import takes the export's attributes too (a CI job often
        // gives both flags one value) and has no use for them.
        let mut spec = CacheSpec::plain(backend);
        spec.mode = match self.take("mode").as_deref() {
            None | Some("min") => Mode::Min,
            Some("max") => Mode::Max,
            Some(m) => return Err(self.bad(format!("mode={m}: expected min or max"))),
        };
        spec.ignore_error = self.boolean("ignore-error")?;
        spec.cache_mounts = self.boolean("cache-mounts")?;
        spec.compression = self.compression()?;
        for key in IGNORED {
            self.take(key);
        }
        Ok(spec)
    }

    fn compression(&mut self) -> Result<Option<LayerCompression>> {
        let kind = self.take("compression");
        let level = self.take("compression-level");
        if kind.is_none() && level.is_none() {
            return Ok(None);
        }
        let mut how = match kind.as_deref() {
            None => LayerCompression::default(),
            Some(k) => LayerCompression::parse(k)
                .ok_or_else(|| self.bad("compression is gzip, zstd or uncompressed"))?,
        };
        if let Some(level) = level {
            how = level
                .parse()
                .ok()
                .and_then(|l| how.with_level(l))
                .ok_or_else(|| self.bad("compression-level is 1-9 for gzip, 1-22 for zstd"))?;
        }
        Ok(Some(how))
    }

    /// Refuses what no step took.
    fn finish(self) -> Result<()> {
        match self.fields.first() {
            None => Ok(()),
            Some((key, _)) => Err(self.bad(format!("unknown attribute {key:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(s: &str) -> Result<CacheSpec> {
        CacheSpec::parse("--cache-to", Direction::Export, s)
    }

    fn import(s: &str) -> Result<CacheSpec> {
        CacheSpec::parse("--cache-from", Direction::Import, s)
    }

    #[test]
    fn a_bare_value_is_a_registry_reference() {
        let spec = import("user/app:cache").unwrap();
        assert_eq!(
            spec.backend,
            Backend::Registry {
                reference: "user/app:cache".into()
            }
        );
        assert_eq!(spec.mode, Mode::Min);
    }

    #[test]
    fn modes_and_ignore_error() {
        let spec = export("type=registry,ref=r/c:1,mode=max,ignore-error=true").unwrap();
        assert_eq!(spec.mode, Mode::Max);
        assert!(spec.ignore_error);
        assert_eq!(export("type=registry,ref=r/c:1").unwrap().mode, Mode::Min);
        assert_eq!(
            export("type=registry,ref=r/c,mode=most").unwrap_err(),
            "--cache-to type=registry,ref=r/c,mode=most: mode=most: expected min or max"
        );
        assert!(export("type=registry,ref=r,ignore-error=maybe").is_err());
    }

    #[test]
    fn local_takes_dest_or_src() {
        let spec = export("type=local,dest=/tmp/c,mode=max").unwrap();
        assert_eq!(
            spec.backend,
            Backend::Local {
                dir: "/tmp/c".into(),
                tag: "latest".into(),
                digest: None,
                reset: false,
            }
        );
        assert!(
            export("type=local,src=/tmp/c")
                .unwrap_err()
                .contains("no dest=")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let spec = import(&format!("type=local,src=/c,tag=v1,digest={digest}")).unwrap();
        let Backend::Local { tag, digest: d, .. } = spec.backend else {
            panic!("not local");
        };
        assert_eq!((tag.as_str(), d.as_deref()), ("v1", Some(digest.as_str())));
        assert!(import("type=local,src=/c,digest=sha256:zz").is_err());
    }

    #[test]
    fn inline_exports_only() {
        assert_eq!(export("type=inline").unwrap().backend, Backend::Inline);
        assert!(import("type=inline").unwrap_err().contains("exports only"));
    }

    #[test]
    fn s3_takes_buildkits_attributes() {
        let spec = export(
            "type=s3,bucket=b,region=us-east-1,endpoint_url=http://127.0.0.1:9000,\
             use_path_style=true,prefix=p/,name=a;b,blobs_prefix=bl/,manifests_prefix=m/,\
             access_key_id=AK,secret_access_key=SK,session_token=ST,upload_parallelism=4",
        )
        .unwrap();
        let Backend::S3(s3) = spec.backend else {
            panic!("not s3");
        };
        assert_eq!(s3.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(s3.use_path_style && s3.has_credentials());
        assert_eq!(s3.names, ["a", "b"]);
        assert_eq!(
            (s3.blobs_prefix.as_str(), s3.manifests_prefix.as_str()),
            ("bl/", "m/")
        );
        assert!(!format!("{s3:?}").contains("SK"));
        let defaults = import("type=s3,bucket=b,region=r").unwrap();
        let Backend::S3(s3) = defaults.backend else {
            panic!("not s3");
        };
        assert_eq!(s3.names, ["buildkit"]);
        assert_eq!(s3.blobs_prefix, "blobs/");
    }

    #[test]
    fn documented_attributes_are_taken_unknown_ones_refused() {
        let spec = export(
            "type=registry,ref=r/c,oci-mediatypes=false,image-manifest=true,\
             compression=zstd,compression-level=3,force-compression=true",
        )
        .unwrap();
        assert_eq!(spec.compression.map(|c| c.name()), Some("zstd"));
        assert_eq!(
            export("type=registry,ref=r/c,colour=blue").unwrap_err(),
            "--cache-to type=registry,ref=r/c,colour=blue: unknown attribute \"colour\""
        );
        assert!(
            export("type=gha")
                .unwrap_err()
                .contains("kiln has no type=gha")
        );
        assert!(
            export("type=floppy")
                .unwrap_err()
                .contains("unknown cache type")
        );
        assert!(export("ref=r/c").unwrap_err().contains("no type="));
        // An import takes (and has no use for) the export's attributes.
        assert!(import("type=registry,ref=r,mode=max,ignore-error=true").is_ok());
    }
}
