//! The one normalizer: an exported image (`docker save`'s docker-archive,
//! `kiln build -o type=oci`'s OCI layout) → the parts of it that a user
//! can observe, in a form two builders must agree on.
//!
//! The form is JSON, checked in as `expected.json` for the cases dockerd
//! cannot build:
//!
//! ```json
//! { "config":  { "Env": [...], "Cmd": [...], "ExposedPorts": ["80/tcp"], ... },
//!   "history": "L E L",           // one letter per history entry: Layer or Empty
//!   "layers":  2,                  // diff IDs in rootfs
//!   "files":   { "/a": "file 0644 0:0 t=978307200 \"hi\\n\"", ... },
//!   "removed": ["/etc/group"] }
//! ```
//!
//! `files` holds the flattened filesystem (every layer applied in order,
//! whiteouts included): for an image on the busybox base only the paths
//! that differ from the base, and `removed` the base's paths that are gone;
//! for any other image (`FROM scratch`) every path.
//!
//! Left out because it differs between any two builds, not between builders:
//! `created` times and history's `created`/`created_by`/`comment` texts (only
//! the empty-layer pattern is compared); the mtime of a path made by the
//! build (`t=new`: only times carried over from the base, the context or an
//! archive — all before 2001-09-09 here — are compared exactly);
//! directories' mtimes altogether (a RUN step's mount stubs and any entry
//! made inside a directory touch it, and dockerd's BuildKit leaves `/etc`
//! touched by every RUN); config fields that are empty (`[]`, `{}`, `""`)
//! are dropped, as a runtime treats them as absent.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use kiln_cache::Digest;
use serde_json::{Map, Value, json};

/// The files every RUN step has mounted over it (`/etc/hosts`,
/// `/etc/resolv.conf`, `/etc/hostname`): mount stubs of every case.
const RUN_STUBS: &[&str] = &["/etc/hosts", "/etc/resolv.conf", "/etc/hostname"];

/// Times at or after this (2001-09-09) are the build's own, so `t=new`;
/// the base and the cases' contexts use fixed times before it.
const NEW_TIME: u64 = 1_000_000_000;

/// Contents up to this size that are printable text are shown as text.
const MAX_TEXT: usize = 256;

/// The image config fields compared (Docker's names).
const CONFIG_FIELDS: [&str; 12] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "StopSignal",
    "Healthcheck",
    "Shell",
    "OnBuild",
];

/// A docker-archive's image, read into memory (the cases' images are small).
pub(crate) struct Image {
    config: Value,
    diff_ids: Vec<String>,
    layers: Vec<Vec<u8>>,
}

impl Image {
    /// Reads the only image of a docker-archive (`docker save`) or an OCI
    /// layout tar (`kiln build -o type=oci`, which keeps the stored
    /// compressed layers: much faster than a docker-archive from kiln's
    /// debug build).
    pub(crate) fn read(bytes: &[u8]) -> Result<Self, String> {
        let files = untar_all(bytes)?;
        let get = |name: &str| {
            files
                .get(name.trim_start_matches("./"))
                .ok_or_else(|| format!("the archive has no {name}"))
        };
        let json = |name: &str| -> Result<Value, String> {
            serde_json::from_slice(get(name)?).map_err(|e| format!("{name}: {e}"))
        };
        let (config, layer_names) = if files.contains_key("manifest.json") {
            let manifest = json("manifest.json")?;
            let entry = match manifest.as_array().map(Vec::as_slice) {
                Some([one]) => one.clone(),
                _ => return Err(format!("manifest.json lists not one image: {manifest}")),
            };
            let config = json(entry["Config"].as_str().ok_or("manifest without Config")?)?;
            (config, strings(&entry["Layers"]))
        } else {
            let blob = |d: &Value| {
                format!(
                    "blobs/sha256/{}",
                    d.as_str().unwrap_or_default().trim_start_matches("sha256:")
                )
            };
            let mut manifest = json("index.json")?;
            // An index (of one image) may name another index first.
            while manifest["manifests"].is_array() {
                let digest = match manifest["manifests"].as_array().map(Vec::as_slice) {
                    Some([one]) => one["digest"].clone(),
                    _ => return Err(format!("index lists not one image: {manifest}")),
                };
                manifest = json(&blob(&digest))?;
            }
            let config = json(&blob(&manifest["config"]["digest"]))?;
            let layers = manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| blob(&l["digest"]))
                .collect();
            (config, layers)
        };
        let layers = layer_names
            .iter()
            .map(|l| get(l).cloned())
            .collect::<Result<Vec<_>, _>>()?;
        let diff_ids = strings(&config["rootfs"]["diff_ids"]);
        if diff_ids.len() != layers.len() {
            return Err(format!(
                "{} diff IDs but {} layers",
                diff_ids.len(),
                layers.len()
            ));
        }
        Ok(Self {
            config,
            diff_ids,
            layers,
        })
    }

    /// The flattened filesystem; `base` (a diff ID and its tree) stands
    /// for the first layer when that is the base's (it is not read again).
    pub(crate) fn tree(&self, base: Option<&(String, Tree)>) -> Result<Tree, String> {
        let (mut tree, skip) = match base {
            Some((id, tree)) if self.diff_ids.first() == Some(id) => (tree.clone(), 1),
            _ => (Tree::default(), 0),
        };
        for (i, layer) in self.layers.iter().enumerate().skip(skip) {
            decompress(layer)
                .and_then(|plain| tree.apply(&plain))
                .map_err(|e| format!("layer {} ({}): {e}", i + 1, self.diff_ids[i]))?;
        }
        Ok(tree)
    }

    /// The normalized form; `base` is the busybox base image's tree and
    /// first diff ID, against which images built on it are shown.
    pub(crate) fn normalize(
        &self,
        base: &(String, Tree),
        stubs: &[String],
    ) -> Result<Value, String> {
        let mut tree = self.tree(Some(base))?;
        let on_base = self.diff_ids.first() == Some(&base.0);
        // Every RUN mounts these over the image's, as both builders do;
        // dockerd 20.10 leaves the empty files it had to make for them.
        let stubs: Vec<String> = stubs
            .iter()
            .cloned()
            .chain(RUN_STUBS.iter().map(|p| (*p).to_owned()))
            .collect();
        tree.drop_stubs(&stubs, if on_base { Some(&base.1) } else { None });
        let (files, removed) = if on_base {
            tree.delta(&base.1)
        } else {
            (tree.render(), Vec::new())
        };
        Ok(json!({
            "config": normalize_config(&self.config["config"]),
            "history": history_pattern(&self.config),
            "layers": self.diff_ids.len(),
            "files": files,
            "removed": removed,
        }))
    }

    /// The first diff ID (the base's, for an image built on it).
    pub(crate) fn first_diff_id(&self) -> Option<&str> {
        self.diff_ids.first().map(String::as_str)
    }
}

/// A JSON array of strings.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every file of a tar, by name (without a leading `./`).
fn untar_all(bytes: &[u8]) -> Result<HashMap<String, Vec<u8>>, String> {
    let mut files = HashMap::new();
    let mut links = Vec::new();
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(|e| format!("archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("archive entry: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("archive entry name: {e}"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if entry.header().entry_type().is_symlink() {
            // `docker save` writes a layer it already wrote as a link to it.
            let target = entry_link(entry.header()).unwrap_or_default();
            let dir = split(&clean(&name)).0.to_owned();
            links.push((name, clean(&format!("{dir}/{target}"))));
            continue;
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| format!("archive entry {name}: {e}"))?;
        files.insert(name, data);
    }
    for (name, target) in links {
        let data = files
            .get(target.trim_start_matches('/'))
            .cloned()
            .ok_or_else(|| format!("archive entry {name} links to missing {target}"))?;
        files.insert(name, data);
    }
    Ok(files)
}

/// A layer as a plain tar, whether stored plain, gzip or zstd.
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let result = match bytes {
        [0x1f, 0x8b, ..] => flate2::read::GzDecoder::new(bytes).read_to_end(&mut out),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out))
        }
        _ => return Ok(bytes.to_vec()),
    };
    result.map_err(|e| format!("decompressing a layer: {e}"))?;
    Ok(out)
}

/// The compared config fields, empty values dropped, maps of empty
/// objects (`ExposedPorts`, `Volumes`) as their sorted keys.
fn normalize_config(config: &Value) -> Value {
    let mut out = Map::new();
    for field in CONFIG_FIELDS {
        let value = match (field, &config[field]) {
            ("ExposedPorts" | "Volumes", Value::Object(m)) => {
                Value::Array(m.keys().map(|k| Value::String(k.clone())).collect())
            }
            ("Healthcheck", Value::Object(m)) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !is_empty(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            (_, v) => v.clone(),
        };
        if !is_empty(&value) {
            out.insert(field.to_owned(), value);
        }
    }
    Value::Object(out)
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        Value::Number(n) => n.as_u64() == Some(0),
        Value::Bool(_) => false,
    }
}

/// `L` for a history entry with a layer, `E` for an empty one.
fn history_pattern(config: &Value) -> String {
    config["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            if h["empty_layer"].as_bool() == Some(true) {
                "E"
            } else {
                "L"
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a path is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File {
        size: usize,
        digest: String,
        text: Option<String>,
    },
    Symlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One path of the flattened filesystem.
#[derive(Clone, Debug)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    /// Paths that share an inode (hard links) share this number.
    inode: usize,
}

/// A flattened filesystem: absolute paths (`/` the root) → what is there.
#[derive(Default, Clone)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
    next_inode: usize,
}

impl Tree {
    /// Applies one layer: first its whiteouts (they hide only what lower
    /// layers made), then its entries in order.
    pub(crate) fn apply(&mut self, layer: &[u8]) -> Result<(), String> {
        let entries = read_entries(layer)?;
        for (path, _) in &entries {
            let (dir, name) = split(path);
            if name == ".wh..wh..opq" {
                self.remove_below(dir);
            } else if let Some(hidden) = name.strip_prefix(".wh.") {
                let hidden = join(dir, hidden);
                self.remove_below(&hidden);
                self.nodes.remove(&hidden);
            }
        }
        for (path, entry) in entries {
            if split(&path).1.starts_with(".wh.") {
                continue;
            }
            self.add(path, entry)?;
        }
        Ok(())
    }

    fn add(&mut self, path: String, entry: Entry) -> Result<(), String> {
        let node = match entry.kind {
            // The link shares its target's inode, so its metadata too.
            EntryKind::Hardlink(target) => match self.nodes.get(&target) {
                Some(linked) if linked.kind != Kind::Dir => linked.clone(),
                Some(_) => return Err(format!("{path}: hard link to directory {target}")),
                None => return Err(format!("{path}: hard link to missing {target}")),
            },
            EntryKind::Plain(kind) => {
                self.next_inode += 1;
                Node {
                    kind,
                    mode: entry.mode,
                    uid: entry.uid,
                    gid: entry.gid,
                    mtime: entry.mtime,
                    inode: self.next_inode,
                }
            }
        };
        let replaces_dir = self.nodes.get(&path).is_some_and(|n| n.kind == Kind::Dir);
        if replaces_dir && node.kind != Kind::Dir {
            self.remove_below(&path);
        }
        self.nodes.insert(path, node);
        Ok(())
    }

    fn remove_below(&mut self, dir: &str) {
        let prefix = if dir == "/" {
            "/".to_owned()
        } else {
            format!("{dir}/")
        };
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .filter(|p| p != "/")
            .collect();
        for p in below {
            self.nodes.remove(&p);
        }
    }

    /// Drops the mount stubs `paths` (deepest first): each where it is an
    /// empty directory or empty file that `base` does not have. dockerd
    /// 20.10's BuildKit leaves a RUN mount's target (and the parents made
    /// for it) in the image; BuildKit since v0.11 removes them
    /// (`executor/stubs.go`, `RemoveMountStubsRecursive`), as kiln does.
    fn drop_stubs(&mut self, paths: &[String], base: Option<&Tree>) {
        let mut paths = paths.to_vec();
        paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for path in paths {
            if base.is_some_and(|b| b.nodes.contains_key(&path)) {
                continue;
            }
            let prefix = format!("{path}/");
            let empty = match self.nodes.get(&path).map(|n| &n.kind) {
                Some(Kind::Dir) => !self.nodes.keys().any(|p| p.starts_with(&prefix)),
                Some(Kind::File { size: 0, .. }) => true,
                _ => false,
            };
            if empty {
                self.nodes.remove(&path);
            }
        }
    }

    /// Every path, rendered.
    pub(crate) fn render(&self) -> BTreeMap<String, String> {
        self.nodes
            .keys()
            .map(|p| (p.clone(), self.render_one(p)))
            .collect()
    }

    /// The paths whose rendering differs from `base`'s, and the base's paths that are gone.
    fn delta(&self, base: &Self) -> (BTreeMap<String, String>, Vec<String>) {
        let base_render = base.render();
        let files = self
            .render()
            .into_iter()
            .filter(|(p, r)| base_render.get(p) != Some(r))
            .collect();
        let removed = base_render
            .keys()
            .filter(|p| !self.nodes.contains_key(*p))
            .cloned()
            .collect();
        (files, removed)
    }

    /// `<type> <mode> <uid>:<gid>`, then the mtime (not for directories),
    /// the link target or content, and the other names of a hard-linked file.
    fn render_one(&self, path: &str) -> String {
        let node = &self.nodes[path];
        let mut out = format!(
            "{} {:04o} {}:{}",
            kind_name(&node.kind),
            node.mode,
            node.uid,
            node.gid
        );
        if node.kind != Kind::Dir {
            if node.mtime < NEW_TIME {
                out.push_str(&format!(" t={}", node.mtime));
            } else {
                out.push_str(" t=new");
            }
        }
        match &node.kind {
            Kind::Dir | Kind::Fifo => {}
            Kind::File { text: Some(t), .. } => {
                out.push(' ');
                out.push_str(&Value::String(t.clone()).to_string());
            }
            Kind::File { size, digest, .. } => out.push_str(&format!(" size={size} {digest}")),
            Kind::Symlink(target) => out.push_str(&format!(" -> {target}")),
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                out.push_str(&format!(" {major},{minor}"));
            }
        }
        if matches!(node.kind, Kind::File { .. }) {
            let others: Vec<&str> = self
                .nodes
                .iter()
                .filter(|(p, n)| n.inode == node.inode && p.as_str() != path)
                .map(|(p, _)| p.as_str())
                .collect();
            if !others.is_empty() {
                out.push_str(&format!(" links={}", others.join(",")));
            }
        }
        out
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Dir => "dir",
        Kind::File { .. } => "file",
        Kind::Symlink(_) => "symlink",
        Kind::Char(..) => "char",
        Kind::Block(..) => "block",
        Kind::Fifo => "fifo",
    }
}

/// A layer entry before it is applied.
struct Entry {
    kind: EntryKind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

impl Entry {
    fn whiteout() -> Self {
        Self {
            kind: EntryKind::Plain(Kind::Fifo),
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }
}

enum EntryKind {
    Plain(Kind),
    /// A hard link to an earlier path (absolute).
    Hardlink(String),
}

fn read_entries(layer: &[u8]) -> Result<Vec<(String, Entry)>, String> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(layer);
    for entry in archive.entries().map_err(|e| format!("layer: {e}"))? {
        let mut entry = entry.map_err(|e| format!("layer entry: {e}"))?;
        let path = clean(
            &entry
                .path()
                .map_err(|e| format!("entry name: {e}"))?
                .to_string_lossy(),
        );
        let header = entry.header().clone();
        if split(&path).1.starts_with(".wh.") {
            // Only the name of a whiteout counts (kiln leaves its numeric
            // fields blank, which Go's archive/tar reads as 0).
            out.push((path, Entry::whiteout()));
            continue;
        }
        let link = || entry_link(&header).ok_or_else(|| format!("{path}: link without a target"));
        let kind = match header.entry_type() {
            tar::EntryType::Directory => EntryKind::Plain(Kind::Dir),
            tar::EntryType::Symlink => EntryKind::Plain(Kind::Symlink(link()?)),
            tar::EntryType::Link => EntryKind::Hardlink(clean(&link()?)),
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                EntryKind::Plain(if header.entry_type() == tar::EntryType::Char {
                    Kind::Char(major, minor)
                } else {
                    Kind::Block(major, minor)
                })
            }
            tar::EntryType::Fifo => EntryKind::Plain(Kind::Fifo),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| format!("{path}: {e}"))?;
                EntryKind::Plain(file_kind(&data))
            }
            other => return Err(format!("{path}: unexpected entry type {other:?}")),
        };
        let entry = Entry {
            kind,
            mode: header.mode().map_err(|e| format!("{path}: mode: {e}"))? & 0o7777,
            uid: header.uid().map_err(|e| format!("{path}: uid: {e}"))?,
            gid: header.gid().map_err(|e| format!("{path}: gid: {e}"))?,
            mtime: header.mtime().map_err(|e| format!("{path}: mtime: {e}"))?,
        };
        out.push((path, entry));
    }
    Ok(out)
}

/// The link target of a (sym or hard) link header, long names included.
fn entry_link(header: &tar::Header) -> Option<String> {
    header
        .link_name()
        .ok()
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
}

fn file_kind(data: &[u8]) -> Kind {
    let text = std::str::from_utf8(data)
        .ok()
        .filter(|t| t.len() <= MAX_TEXT)
        .filter(|t| t.chars().all(|c| c == '\n' || c == '\t' || !c.is_control()))
        .map(str::to_owned);
    Kind::File {
        size: data.len(),
        digest: Digest::of(data).to_string(),
        text,
    }
}

/// An archive name as an absolute path without `.` or `..` parts or a
/// trailing slash.
fn clean(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `/a/b` → (`/a`, `b`); `/a` → (`/`, `a`).
fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => ("/", path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer of (path, kind) entries; kind is `dir`, `file:TEXT`,
    /// `link:TARGET` (hard) or `sym:TARGET`.
    fn layer(entries: &[(&str, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_mtime(1);
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(0);
            let appended = if *kind == "dir" {
                header.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut header, path, std::io::empty())
            } else if let Some(text) = kind.strip_prefix("file:") {
                header.set_size(text.len() as u64);
                tar.append_data(&mut header, path, text.as_bytes())
            } else if let Some(target) = kind.strip_prefix("link:") {
                header.set_entry_type(tar::EntryType::Link);
                tar.append_link(&mut header, path, target)
            } else {
                header.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut header, path, kind.trim_start_matches("sym:"))
            };
            appended.expect("entry in memory");
        }
        tar.into_inner().expect("layer in memory")
    }

    fn paths(tree: &Tree) -> Vec<String> {
        tree.nodes.keys().cloned().collect()
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let mut tree = Tree::default();
        tree.apply(&layer(&[
            ("d", "dir"),
            ("d/a", "file:a"),
            ("d/b", "file:b"),
            ("e", "dir"),
            ("e/x", "file:x"),
            ("f", "file:f"),
        ]))
        .unwrap();
        // The opaque marker comes after a new entry of the same layer: it stays.
        tree.apply(&layer(&[
            ("d", "dir"),
            ("d/new", "file:n"),
            ("d/.wh..wh..opq", "file:"),
            ("e/.wh.x", "file:"),
            (".wh.f", "file:"),
        ]))
        .unwrap();
        assert_eq!(paths(&tree), ["/d", "/d/new", "/e"]);
    }

    #[test]
    fn a_whiteout_removes_a_whole_directory_and_a_file_replaces_one() {
        let mut tree = Tree::default();
        tree.apply(&layer(&[
            ("d", "dir"),
            ("d/a", "file:a"),
            ("g", "dir"),
            ("g/h", "file:h"),
        ]))
        .unwrap();
        tree.apply(&layer(&[(".wh.d", "file:"), ("g", "file:now a file")]))
            .unwrap();
        assert_eq!(paths(&tree), ["/g"]);
        assert!(tree.render_one("/g").ends_with("\"now a file\""));
    }

    #[test]
    fn hard_links_share_an_inode_until_one_is_replaced() {
        let mut tree = Tree::default();
        tree.apply(&layer(&[
            ("a", "file:shared"),
            ("b", "link:a"),
            ("c", "sym:a"),
        ]))
        .unwrap();
        assert_eq!(
            tree.render_one("/a"),
            "file 0644 0:0 t=1 \"shared\" links=/b"
        );
        assert_eq!(
            tree.render_one("/b"),
            "file 0644 0:0 t=1 \"shared\" links=/a"
        );
        assert_eq!(tree.render_one("/c"), "symlink 0644 0:0 t=1 -> a");
        tree.apply(&layer(&[("a", "file:changed")])).unwrap();
        assert_eq!(tree.render_one("/b"), "file 0644 0:0 t=1 \"shared\"");
    }

    #[test]
    fn binary_or_long_contents_are_hashed() {
        let kind = file_kind(&[0, 1, 2]);
        assert!(matches!(
            kind,
            Kind::File {
                size: 3,
                text: None,
                ..
            }
        ));
        let long = "x".repeat(MAX_TEXT + 1);
        assert!(matches!(
            file_kind(long.as_bytes()),
            Kind::File { text: None, .. }
        ));
    }

    #[test]
    fn empty_config_values_are_dropped() {
        let config = json!({
            "Env": ["A=1"], "Cmd": [], "Entrypoint": null, "WorkingDir": "",
            "ExposedPorts": {"80/tcp": {}}, "Volumes": {}, "Labels": {"a": "b"},
            "Healthcheck": {"Test": ["CMD", "true"], "Retries": 0},
        });
        assert_eq!(
            normalize_config(&config),
            json!({
                "Env": ["A=1"], "ExposedPorts": ["80/tcp"], "Labels": {"a": "b"},
                "Healthcheck": {"Test": ["CMD", "true"]},
            })
        );
    }
}
