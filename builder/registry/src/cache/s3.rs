//! `type=s3`: the artifact in an S3 bucket, laid out as BuildKit's s3
//! cache lays out its own: blobs (the config and layers) at
//! `PREFIX + blobs_prefix + "sha256:<hex>"`, the manifest at
//! `PREFIX + manifests_prefix + NAME` for each `name=` (an import reads
//! the first). A blob the bucket has is not sent again.
//!
//! Requests are signed with SigV4 ([`super::sigv4`]) on the registry's
//! HTTP client (blocking reqwest over rustls): the credentials are the
//! request's own (`access_key_id=` … or, for the CLI, `AWS_ACCESS_KEY_ID`
//! … of its environment, read where the flag is parsed), never kilnd's;
//! none: unsigned requests (a public bucket). Plain HTTP only to a
//! loopback endpoint or one `--insecure-registry` covers, as registries.

use std::io::Read;
use std::time::Duration;

use kiln_cache::{Digest, Store};
use kiln_image::image;
use reqwest::blocking::{Body, Client, Response};

use super::artifact::{self, Artifact};
use super::sigv4::{self, Credentials, EMPTY_SHA256};
use super::spec::S3Spec;
use super::{CacheError, Exported, Imported};
use crate::Result;
use crate::insecure::{covers, host_name, is_loopback};
use crate::session::Options;

/// One bucket, as the spec names it.
struct Bucket<'a> {
    spec: &'a S3Spec,
    http: Client,
    /// `http` or `https`.
    scheme: String,
    /// The host (and port) requests go to.
    host: String,
    /// `/BUCKET` in path style, else empty.
    path_prefix: String,
    credentials: Option<Credentials>,
}

impl<'a> Bucket<'a> {
    fn new(spec: &'a S3Spec, options: &Options) -> Result<Self> {
        let fail = |reason: String| CacheError::S3 {
            bucket: spec.bucket.clone(),
            what: "configuring".into(),
            reason,
        };
        if spec.region.is_empty() {
            return Err(fail("region ($AWS_REGION) not set for s3 cache".into()).into());
        }
        // Both become part of a host name (or a path): checked as S3 names
        // them, so that neither can point a request anywhere else.
        check_bucket(&spec.bucket).map_err(|e| fail(format!("bucket={}: {e}", spec.bucket)))?;
        check_region(&spec.region).map_err(|e| fail(format!("region={}: {e}", spec.region)))?;
        let endpoint = spec
            .endpoint_url
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", spec.region));
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|e| fail(format!("endpoint_url={endpoint}: {e}")))?;
        let name = url
            .host_str()
            .ok_or_else(|| fail(format!("endpoint_url={endpoint}: no host")))?;
        let host = match url.port() {
            Some(p) => format!("{name}:{p}"),
            None => name.to_owned(),
        };
        let scheme = url.scheme().to_owned();
        let plain_ok =
            is_loopback(host_name(&host)) || options.insecure.iter().any(|h| covers(h, &host));
        if scheme == "http" && !plain_ok {
            return Err(fail(format!(
                "endpoint_url={endpoint}: plain HTTP only to loopback or an --insecure-registry host"
            ))
            .into());
        }
        if scheme != "http" && scheme != "https" {
            return Err(fail(format!("endpoint_url={endpoint}: not http or https")).into());
        }
        let (host, path_prefix) = if spec.use_path_style {
            (host, format!("/{}", sigv4::uri_encode(&spec.bucket)))
        } else {
            (format!("{}.{host}", spec.bucket), String::new())
        };
        let http = Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .timeout(None)
            // S3 answers; it does not send a request elsewhere (a redirect
            // could point kilnd at a host nobody allowed, in plain HTTP).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let credentials = spec.has_credentials().then(|| Credentials {
            access_key_id: spec.access_key_id.clone(),
            secret_access_key: spec.secret_access_key.clone(),
            session_token: spec.session_token.clone(),
        });
        Ok(Self {
            spec,
            http,
            scheme,
            host,
            path_prefix,
            credentials,
        })
    }

    fn failed(&self, what: &str, reason: impl std::fmt::Display) -> CacheError {
        CacheError::S3 {
            bucket: self.spec.bucket.clone(),
            what: what.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn blob_key(&self, digest: &Digest) -> String {
        format!("{}{}{digest}", self.spec.prefix, self.spec.blobs_prefix)
    }

    fn manifest_key(&self, name: &str) -> String {
        format!("{}{}{name}", self.spec.prefix, self.spec.manifests_prefix)
    }

    /// Sends `method` on `key`, signed when there are credentials.
    fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        payload_sha256: &str,
        body: Option<Body>,
        what: &str,
    ) -> Result<Response> {
        let path = format!("{}/{}", self.path_prefix, sigv4::uri_encode(key));
        let url = format!("{}://{}{path}", self.scheme, self.host);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(credentials) = &self.credentials {
            let signed = sigv4::sign(
                &sigv4::Request {
                    method: method.as_str(),
                    host: &self.host,
                    path: &path,
                    query: "",
                    payload_sha256,
                    extra: &[],
                },
                credentials,
                &self.spec.region,
                image::now(),
            );
            for (name, value) in signed {
                request = request.header(name, value);
            }
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        request.send().map_err(|e| self.failed(what, e).into())
    }

    /// Whether `key` is there.
    fn exists(&self, key: &str) -> Result<bool> {
        let what = format!("looking up {key}");
        let response = self.send(reqwest::Method::HEAD, key, EMPTY_SHA256, None, &what)?;
        match response.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(&what, response)),
        }
    }

    /// The object at `key`.
    fn get(&self, key: &str) -> Result<Response> {
        let what = format!("reading {key}");
        let response = self.send(reqwest::Method::GET, key, EMPTY_SHA256, None, &what)?;
        if !response.status().is_success() {
            return Err(self.status_error(&what, response));
        }
        Ok(response)
    }

    fn put(&self, key: &str, body: Body, payload_sha256: &str) -> Result<()> {
        let what = format!("writing {key}");
        let response = self.send(reqwest::Method::PUT, key, payload_sha256, Some(body), &what)?;
        if !response.status().is_success() {
            return Err(self.status_error(&what, response));
        }
        Ok(())
    }

    /// An error response's status and S3's `<Code>` and `<Message>`.
    fn status_error(&self, what: &str, response: Response) -> crate::RegistryError {
        let status = response.status().as_u16();
        let mut text = String::new();
        let _ = response.take(64 << 10).read_to_string(&mut text);
        let field = |tag: &str| {
            let open = format!("<{tag}>");
            let start = text.find(&open)? + open.len();
            let end = text[start..].find("</")? + start;
            Some(text[start..end].to_owned())
        };
        let detail = [field("Code"), field("Message")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        self.failed(what, format!("HTTP {status} {detail}").trim_end())
            .into()
    }
}

/// S3's bucket naming rules: 3–63 lower-case letters, digits, dots and
/// hyphens, starting and ending with a letter or digit.
fn check_bucket(name: &str) -> std::result::Result<(), &'static str> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && !name.contains("..");
    ok.then_some(())
        .ok_or("not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
}

/// A region name: lower-case letters, digits and hyphens, at most 32.
fn check_region(name: &str) -> std::result::Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(())
        .ok_or("not a region name (a-z, 0-9, '-', at most 32)")
}

/// Sends the artifact's blobs the bucket lacks, then its manifest under
/// every name.
pub(super) fn export(
    store: &Store,
    spec: &S3Spec,
    artifact: &Artifact,
    options: &Options,
) -> Result<Exported> {
    let bucket = Bucket::new(spec, options)?;
    let mut exported = Exported::default();
    for (digest, _) in &artifact.blobs {
        let key = bucket.blob_key(digest);
        if bucket.exists(&key)? {
            exported.skipped += 1;
            continue;
        }
        let file = store.content.open_blob(digest)?;
        let size = file
            .metadata()
            .map_err(|e| bucket.failed(&format!("reading blob {digest}"), e))?
            .len();
        // The blob's digest is the SHA-256 of the body.
        bucket.put(&key, Body::sized(file, size), digest.hex())?;
        exported.uploaded += 1;
    }
    let sha = sigv4::hex(&<sha2::Sha256 as sha2::Digest>::digest(&artifact.manifest));
    for name in &spec.names {
        bucket.put(
            &bucket.manifest_key(name),
            Body::from(artifact.manifest.clone()),
            &sha,
        )?;
    }
    Ok(exported)
}

/// Fetches the manifest of the first name, the blobs the store lacks,
/// and records the cache.
pub(super) fn import(store: &Store, spec: &S3Spec, options: &Options) -> Result<Imported> {
    let bucket = Bucket::new(spec, options)?;
    let name = spec.names.first().map_or("buildkit", String::as_str);
    let key = bucket.manifest_key(name);
    let mut manifest = Vec::new();
    bucket
        .get(&key)?
        .take(image::MAX_METADATA + 1)
        .read_to_end(&mut manifest)
        .map_err(|e| bucket.failed(&format!("reading {key}"), e))?;
    if manifest.len() as u64 > image::MAX_METADATA {
        return Err(bucket
            .failed(&format!("reading {key}"), "over 4 MiB")
            .into());
    }
    let cache = format!("s3 bucket {} ({key})", spec.bucket);
    let wanted = artifact::read(&cache, &manifest)?;
    let mut blobs = vec![wanted.config.clone()];
    blobs.extend(wanted.layers);
    for (digest, size) in blobs.iter().filter(|(d, _)| !store.content.has(d)) {
        let key = bucket.blob_key(digest);
        let response = bucket.get(&key)?;
        let mut writer = store.content.writer()?;
        // No more than the manifest says: a server that sends more is
        // stopped at one byte over, before the disk fills.
        let copied = std::io::copy(&mut response.take(size.saturating_add(1)), &mut writer)
            .map_err(|e| bucket.failed(&format!("reading {key}"), e))?;
        if copied != *size {
            return Err(bucket
                .failed(
                    &format!("reading {key}"),
                    format!("{copied} bytes where the manifest says {size}"),
                )
                .into());
        }
        // The store keeps nothing whose bytes are not its digest.
        writer.commit(Some(digest))?;
    }
    artifact::apply(store, &cache, &wanted.config.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bucket or region that would change the host a request goes to
    /// (or its path) is refused before any request.
    #[test]
    fn names_that_would_move_the_request_are_refused() {
        for good in ["kiln-cache", "ci.cache.example", "abc"] {
            assert!(check_bucket(good).is_ok(), "{good}");
        }
        for bad in [
            "169.254.169.254/latest/meta-data/x?",
            "a.evil#",
            "UPPER",
            "ab",
            "-lead",
            "trail.",
            "a..b",
            "host:80",
            &"a".repeat(64),
        ] {
            assert!(check_bucket(bad).is_err(), "{bad}");
        }
        assert!(check_region("us-east-1").is_ok());
        for bad in ["", "us-east-1.evil.com", "x/y", "US"] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
    }
}
