//! OCI annotations a build sets (`--annotation`, `-o annotation.K=V`, as
//! buildx and BuildKit's image exporter take them): on each platform's
//! manifest, on the index, on the index's descriptor of each manifest.
//! A manifest or index is annotated by writing it again with its
//! `annotations` merged; an image that leaves the machine keeps what the
//! store's had ([`carried`]).
//!
//! Not here: `index-descriptor` annotations (the OCI layout's own
//! `index.json` entry), which kiln refuses when asked.

use std::collections::BTreeMap;

use kiln_cache::{Digest, Store};
use serde_json::{Map, Value};

use super::{ImageError, Platform, Result, canonical_json, read_metadata};

/// The bytes all annotations of one build may hold together: they go into
/// manifests and an index, which a reader takes only up to 4 MiB.
pub const MAX_ANNOTATION_BYTES: usize = 1 << 20;

/// Where an annotation goes (buildx's `TYPE` of `TYPE[PLATFORM]:KEY=VALUE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Each platform's manifest (the default).
    Manifest,
    /// The index of several platforms' manifests.
    Index,
    /// The index's entry (descriptor) of each manifest.
    ManifestDescriptor,
}

impl Target {
    /// buildx's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Manifest => "manifest",
            Self::Index => "index",
            Self::ManifestDescriptor => "manifest-descriptor",
        }
    }
}

/// One annotation: where it goes, for which platform (`None`: every one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub target: Target,
    pub platform: Option<Platform>,
    pub key: String,
    pub value: String,
}

impl Target {
    fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "manifest" => Ok(Self::Manifest),
            "index" => Ok(Self::Index),
            "manifest-descriptor" => Ok(Self::ManifestDescriptor),
            "index-descriptor" => Err(
                "index-descriptor annotations (the OCI layout's own index.json entry) are not \
                 supported by kiln yet"
                    .to_owned(),
            ),
            other => Err(format!(
                "unknown annotation type {other:?} (manifest, index, manifest-descriptor)"
            )),
        }
    }
}

impl Annotation {
    /// `--annotation [TYPE[,TYPE…][PLATFORM]:]KEY=VALUE`, buildx's form:
    /// one annotation per type named (`manifest` when none is).
    pub fn parse_flag(spec: &str) -> std::result::Result<Vec<Self>, String> {
        let (lhs, value) = spec
            .split_once('=')
            .ok_or_else(|| "expected [TYPE[PLATFORM]:]KEY=VALUE".to_owned())?;
        let (types, platform, key) = match lhs.split_once(':') {
            Some((prefix, key)) if is_type_prefix(prefix) => {
                let (types, platform) = split_platform(prefix)?;
                (types.split(',').collect(), platform, key)
            }
            _ => (vec!["manifest"], None, lhs),
        };
        types
            .into_iter()
            .map(|t| Self::new(Target::parse(t)?, platform.clone(), key, value))
            .collect()
    }

    /// An `-o` attribute `annotation[-TYPE][PLATFORM].KEY=VALUE` (BuildKit's
    /// exporter form); `None` for an attribute that is no annotation.
    pub fn parse_attribute(field: &str) -> Option<std::result::Result<Self, String>> {
        let (lhs, value) = field.split_once('=')?;
        let rest = lhs.strip_prefix("annotation")?;
        let (kind, key) = rest.split_once('.')?;
        Some((|| {
            let kind = match kind.strip_prefix('-') {
                Some(k) => k,
                None if kind.is_empty() || kind.starts_with('[') => {
                    // `annotation.` or `annotation[PLATFORM].`: a manifest's.
                    return Self::with_platform(&format!("manifest{kind}"), key, value);
                }
                None => return Err(format!("unknown annotation attribute {lhs:?}")),
            };
            Self::with_platform(kind, key, value)
        })())
    }

    fn with_platform(kind: &str, key: &str, value: &str) -> std::result::Result<Self, String> {
        let (name, platform) = split_platform(kind)?;
        Self::new(Target::parse(name)?, platform, key, value)
    }

    fn new(
        target: Target,
        platform: Option<Platform>,
        key: &str,
        value: &str,
    ) -> std::result::Result<Self, String> {
        if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("annotation key {key:?}: empty or with spaces"));
        }
        if target == Target::Index && platform.is_some() {
            return Err("an index annotation names no platform".to_owned());
        }
        Ok(Self {
            target,
            platform,
            key: key.to_owned(),
            value: value.to_owned(),
        })
    }

    /// The flag's form, which [`Annotation::parse_flag`] reads back (how
    /// the wire carries it).
    pub fn spec(&self) -> String {
        let platform = self
            .platform
            .as_ref()
            .map(|p| format!("[{}]", kiln_frontend::platform::format(p)))
            .unwrap_or_default();
        format!(
            "{}{platform}:{}={}",
            self.target.name(),
            self.key,
            self.value
        )
    }
}

/// Whether `prefix` (before a `:`) is `TYPE[,TYPE…][PLATFORM]`, not part
/// of a key.
fn is_type_prefix(prefix: &str) -> bool {
    let types = prefix.split('[').next().unwrap_or_default();
    !types.is_empty()
        && types
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b',')
        && (prefix.len() == types.len() || prefix.ends_with(']'))
}

/// `TYPE[PLATFORM]` → the type and the parsed platform.
fn split_platform(text: &str) -> std::result::Result<(&str, Option<Platform>), String> {
    let Some((name, rest)) = text.split_once('[') else {
        return Ok((text, None));
    };
    let platform = rest
        .strip_suffix(']')
        .ok_or_else(|| format!("{text:?}: expected TYPE[PLATFORM]"))?;
    let parsed = kiln_frontend::platform::parse(platform)
        .map_err(|e| format!("{text:?}: platform {platform:?}: {e}"))?;
    Ok((name, Some(parsed)))
}

/// A build's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations(pub Vec<Annotation>);

impl Annotations {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// What goes on `target` for `platform` (`None`: the index itself),
    /// later ones over earlier ones of the same key.
    pub fn on(&self, target: Target, platform: Option<&Platform>) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter(|a| a.target == target)
            .filter(|a| match (&a.platform, platform) {
                (None, _) => true,
                (Some(want), Some(p)) => want == p,
                (Some(_), None) => false,
            })
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect()
    }

    /// Whether any goes on an index or its entries: only a build for
    /// several platforms makes one.
    pub fn need_index(&self) -> bool {
        self.0.iter().any(|a| a.target != Target::Manifest)
    }

    /// The bytes the keys and values hold together.
    pub fn bytes(&self) -> usize {
        self.0.iter().map(|a| a.key.len() + a.value.len()).sum()
    }
}

/// The manifest or index `digest` names written again with `add` merged
/// into its `annotations` (the same digest when `add` is empty): its
/// digest and size.
pub fn annotate(
    store: &Store,
    digest: &Digest,
    add: &BTreeMap<String, String>,
) -> Result<(Digest, u64)> {
    // Nothing to add: nothing to read (every build's manifest comes here).
    if add.is_empty() {
        return Ok((digest.clone(), store.content.size(digest)?));
    }
    annotate_with(store, digest, &mut |doc| {
        merge(doc, add);
        Ok(())
    })
}

/// The index `digest` names written again with `entry(platform)` merged
/// into each manifest entry's `annotations`, and `own` into its own.
pub fn annotate_index(
    store: &Store,
    digest: &Digest,
    own: &BTreeMap<String, String>,
    entry: &dyn Fn(Option<&Platform>) -> BTreeMap<String, String>,
) -> Result<(Digest, u64)> {
    annotate_with(store, digest, &mut |doc| {
        if let Some(Value::Array(entries)) = doc.get_mut("manifests") {
            for e in entries {
                let platform = e
                    .get("platform")
                    .and_then(|p| serde_json::from_value::<PlatformJson>(p.clone()).ok())
                    .map(PlatformJson::into_platform);
                merge(e, &entry(platform.as_ref()));
            }
        }
        merge(doc, own);
        Ok(())
    })
}

/// What the store's manifest or index `from` carries, written onto
/// `onto` (an image as it leaves, its layers or entries made anew): its
/// own annotations and, for an index, each entry's by platform.
pub fn carried(store: &Store, from: &Digest, onto: &Digest) -> Result<Digest> {
    if from == onto {
        return Ok(onto.clone());
    }
    let source = parse(store, from)?;
    let own = strings(source.get("annotations"));
    let mut by_platform: Vec<(Option<Platform>, BTreeMap<String, String>)> = Vec::new();
    if let Some(Value::Array(entries)) = source.get("manifests") {
        for e in entries {
            let platform = e
                .get("platform")
                .and_then(|p| serde_json::from_value::<PlatformJson>(p.clone()).ok())
                .map(PlatformJson::into_platform);
            by_platform.push((platform, strings(e.get("annotations"))));
        }
    }
    if own.is_empty() && by_platform.iter().all(|(_, a)| a.is_empty()) {
        return Ok(onto.clone());
    }
    let entry = |p: Option<&Platform>| {
        by_platform
            .iter()
            .find(|(q, _)| q.as_ref() == p)
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    };
    Ok(annotate_index(store, onto, &own, &entry)?.0)
}

#[derive(serde::Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: String,
}

impl PlatformJson {
    fn into_platform(self) -> Platform {
        Platform {
            os: self.os,
            architecture: self.architecture,
            variant: self.variant,
        }
    }
}

fn parse(store: &Store, digest: &Digest) -> Result<Value> {
    serde_json::from_slice(&read_metadata(store, digest)?).map_err(|source| ImageError::Json {
        what: "manifest",
        digest: digest.to_string(),
        source,
    })
}

fn annotate_with(
    store: &Store,
    digest: &Digest,
    edit: &mut dyn FnMut(&mut Value) -> Result<()>,
) -> Result<(Digest, u64)> {
    let mut doc = parse(store, digest)?;
    let before = doc.clone();
    edit(&mut doc)?;
    if doc == before {
        return Ok((digest.clone(), store.content.size(digest)?));
    }
    let bytes = canonical_json(&doc);
    Ok((store.content.write_bytes(&bytes)?, bytes.len() as u64))
}

/// `add` merged into `doc`'s `annotations` (made when missing).
fn merge(doc: &mut Value, add: &BTreeMap<String, String>) {
    if add.is_empty() {
        return;
    }
    let Value::Object(obj) = doc else {
        return;
    };
    let annotations = obj
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(Map::new());
    }
    if let Value::Object(map) = annotations {
        for (k, v) in add {
            map.insert(k.clone(), Value::String(v.clone()));
        }
    }
}

fn strings(value: Option<&Value>) -> BTreeMap<String, String> {
    let Some(Value::Object(map)) = value else {
        return BTreeMap::new();
    };
    map.iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(arch: &str) -> Platform {
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: String::new(),
        }
    }

    #[test]
    fn annotations_go_where_they_are_asked() {
        let a = |target, platform: Option<&str>, key: &str, value: &str| Annotation {
            target,
            platform: platform.map(platform_of),
            key: key.into(),
            value: value.into(),
        };
        fn platform_of(arch: &str) -> Platform {
            platform(arch)
        }
        let all = Annotations(vec![
            a(Target::Manifest, None, "k", "every"),
            a(Target::Manifest, Some("arm64"), "k", "arm"),
            a(Target::Index, None, "i", "x"),
        ]);
        let amd = platform("amd64");
        let arm = platform("arm64");
        assert_eq!(all.on(Target::Manifest, Some(&amd))["k"], "every");
        assert_eq!(all.on(Target::Manifest, Some(&arm))["k"], "arm");
        assert_eq!(all.on(Target::Index, None)["i"], "x");
        assert!(all.need_index());
        assert_eq!(all.bytes(), 1 + 5 + 1 + 3 + 1 + 1);
    }

    #[test]
    fn buildx_forms_parse() {
        let one = |spec: &str| Annotation::parse_flag(spec).unwrap();
        let a = one("org.opencontainers.image.title=kiln app");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].target, Target::Manifest);
        assert_eq!(a[0].value, "kiln app");
        let both = one("index,manifest-descriptor:k=v");
        assert_eq!(both[0].target, Target::Index);
        assert_eq!(both[1].target, Target::ManifestDescriptor);
        let arm = one("manifest[linux/arm64]:k=v");
        assert_eq!(arm[0].platform, Some(platform("arm64")));
        assert_eq!(Annotation::parse_flag(&arm[0].spec()).unwrap(), arm);
        for bad in [
            "k",
            "=v",
            "index[linux/arm64]:k=v",
            "bogus:k=v",
            "index-descriptor:k=v",
        ] {
            assert!(Annotation::parse_flag(bad).is_err(), "{bad}");
        }
        let attr = |f: &str| Annotation::parse_attribute(f).unwrap().unwrap();
        assert_eq!(attr("annotation.k=v").target, Target::Manifest);
        assert_eq!(attr("annotation-index.k=v").target, Target::Index);
        let p = attr("annotation-manifest[linux/arm64].k=v");
        assert_eq!(
            (p.target, p.platform),
            (Target::Manifest, Some(platform("arm64")))
        );
        assert_eq!(
            attr("annotation[linux/arm64].k=v").platform,
            Some(platform("arm64"))
        );
        assert!(Annotation::parse_attribute("compression=gzip").is_none());
        assert!(
            Annotation::parse_attribute("annotation-bogus.k=v")
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn a_manifest_is_written_again_with_its_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let manifest = br#"{"schemaVersion":2,"layers":[]}"#;
        let digest = store.content.write_bytes(manifest).unwrap();
        let same = annotate(&store, &digest, &BTreeMap::new()).unwrap();
        assert_eq!(same.0, digest);
        let add = BTreeMap::from([("org.opencontainers.image.title".into(), "t".into())]);
        let (annotated, size) = annotate(&store, &digest, &add).unwrap();
        let doc: Value = serde_json::from_slice(&store.content.read(&annotated).unwrap()).unwrap();
        assert_eq!(doc["annotations"]["org.opencontainers.image.title"], "t");
        assert_eq!(size, store.content.size(&annotated).unwrap());
        // What leaves carries them onto a manifest made anew.
        let other = store
            .content
            .write_bytes(br#"{"schemaVersion":2,"layers":[1]}"#)
            .unwrap();
        let carried_onto = carried(&store, &annotated, &other).unwrap();
        let doc: Value =
            serde_json::from_slice(&store.content.read(&carried_onto).unwrap()).unwrap();
        assert_eq!(doc["annotations"]["org.opencontainers.image.title"], "t");
        assert_eq!(doc["layers"][0], 1);
    }
}
