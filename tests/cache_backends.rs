//! Build caches beyond the registry, with buildx's syntax: `type=local`
//! (an OCI layout directory: round trips embedded and through kilnd,
//! concurrent exporters, hostile directories), `type=inline` (the image's
//! own steps in its config, imported with `--cache-from REF`), `mode=min`
//! against `mode=max`, `ignore-error=true`, and `type=s3` against a real
//! S3-compatible server (moto) on loopback.

use std::fs;
use std::path::Path;

use crate::busybox::Setup;
use crate::registry::{Registry, registry_ready, stderr};
use kiln_testing::{Need, require};

/// Two stages: `deps`' step is in the image only through the COPY, so a
/// `mode=min` cache leaves it out.
const DOCKERFILE: &str = "FROM base:busybox AS deps\nRUN echo deps > /deps && echo more > /more\nFROM base:busybox\nCOPY --from=deps /deps /deps\nCOPY version.txt /\nRUN cat /version.txt > /final\n";

fn ready() -> bool {
    require(&[Need::Root, Need::Busybox])
}

fn setup() -> Setup {
    let s = Setup::new();
    fs::write(s.context.join("version.txt"), "1\n").unwrap();
    s
}

/// The image ID (config digest) of `name` in `s`'s store (`global`:
/// `--addr`). The manifests differ: a store that imported a cache holds
/// the cache's compressed layers, the other its own uncompressed ones.
fn digest(s: &Setup, global: &[&str], name: &str) -> String {
    let out = s.ok(&[global, &["inspect", name]].concat()).0;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Id"].as_str().unwrap().to_owned()
}

/// Builds with `args` and returns (stderr, steps run, steps cached).
fn build(s: &Setup, args: &[&str]) -> (String, usize, usize) {
    // A fixed epoch: a step run again makes the same bytes, and the
    // same build the same image.
    let mut all = vec![
        "--progress=plain",
        "--build-arg",
        "SOURCE_DATE_EPOCH=1600000000",
    ];
    all.extend_from_slice(args);
    let out = s.build(DOCKERFILE, &all);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    let (done, cached) = (log.matches(" DONE").count(), log.matches(" CACHED").count());
    (log, done, cached)
}

/// Exports from a store with `to`, imports into a fresh one with `from`
/// and rebuilds: every step CACHED (`mode=max`) and the same image.
fn round_trip(global: &[&str], to: &str, from: &str, a: &Setup, b: &Setup) {
    let (log, _, _) = build(a, &[global, &["--cache-to", to, "-t", "app:1"]].concat());
    assert!(log.contains("exporting cache to"), "{log}");
    let (log, done, cached) = build(
        b,
        &[global, &["--cache-from", from, "-t", "app:1"]].concat(),
    );
    assert!(log.contains("importing cache from"), "{log}");
    assert_eq!(done, 0, "nothing ran: {log}");
    assert_eq!(cached, 4, "{log}");
    assert_eq!(digest(a, global, "app:1"), digest(b, global, "app:1"));
}

#[test]
fn local_cache_round_trips_embedded() {
    if !ready() {
        return;
    }
    let (a, b) = (setup(), setup());
    let dir = a.dir.path().join("cache");
    let d = dir.display();
    round_trip(
        &[],
        &format!("type=local,dest={d},mode=max"),
        &format!("type=local,src={d}"),
        &a,
        &b,
    );
    // An OCI layout: BuildKit's tag annotation, blobs by digest.
    assert!(dir.join("oci-layout").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    let manifest = entries[0]["digest"].as_str().unwrap();
    let hex = manifest.strip_prefix("sha256:").unwrap();
    assert!(dir.join("blobs/sha256").join(hex).is_file());

    // Another tag leaves the first; the same tag replaces it. Blobs stay
    // without reset=true, and go with it.
    fs::write(a.context.join("version.txt"), "2\n").unwrap();
    build(&a, &["--cache-to", &format!("type=local,dest={d},tag=v2")]);
    let count = || fs::read_dir(dir.join("blobs/sha256")).unwrap().count();
    let before = count();
    fs::write(a.context.join("version.txt"), "3\n").unwrap();
    build(&a, &["--cache-to", &format!("type=local,dest={d},tag=v2")]);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2, "{index}");
    assert!(count() > before, "nothing removed without reset");
    build(
        &a,
        &[
            "--cache-to",
            &format!("type=local,dest={d},tag=v2,reset=true"),
        ],
    );
    assert!(
        count() < before + 3,
        "reset removed the replaced manifest's blobs"
    );
    // What the index names is all there: a fresh store imports tag v2.
    let c = setup();
    fs::write(c.context.join("version.txt"), "3\n").unwrap();
    let (log, done, _) = build(&c, &["--cache-from", &format!("type=local,src={d},tag=v2")]);
    assert_eq!(done, 1, "mode=min: only deps' step runs: {log}");
}

#[test]
fn local_cache_round_trips_through_kilnd() {
    if !ready() {
        return;
    }
    let (a, b) = (setup(), setup());
    let kilnd_a = crate::kilnd::Kilnd::start(&a);
    let kilnd_b = crate::kilnd::Kilnd::start(&b);
    let dir = a.dir.path().join("cache");
    let d = dir.display();
    let to = format!("type=local,dest={d},mode=max");
    let from = format!("type=local,src={d}");
    let (addr_a, addr_b) = (kilnd_a.addr(), kilnd_b.addr());
    let (log, _, _) = build(&a, &["--addr", &addr_a, "--cache-to", &to, "-t", "app:1"]);
    assert!(
        log.contains(&format!("exporting cache to local {d} done")),
        "{log}"
    );
    let (log, done, cached) = build(
        &b,
        &["--addr", &addr_b, "--cache-from", &from, "-t", "app:1"],
    );
    assert!(log.contains("importing cache from local"), "{log}");
    assert_eq!((done, cached), (0, 4), "{log}");
    assert_eq!(
        digest(&a, &["--addr", &addr_a], "app:1"),
        digest(&b, &["--addr", &addr_b], "app:1")
    );
    // The directory kilnd made is one an embedded build imports.
    let c = setup();
    let (log, done, _) = build(&c, &["--cache-from", &from]);
    assert_eq!(done, 0, "{log}");
}

#[test]
fn min_leaves_other_stages_out_max_keeps_them() {
    if !ready() {
        return;
    }
    let a = setup();
    let min = a.dir.path().join("min");
    let max = a.dir.path().join("max");
    build(
        &a,
        &[
            "--cache-to",
            &format!("type=local,dest={}", min.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=max", max.display()),
        ],
    );
    let b = setup();
    let (log, done, _) = build(
        &b,
        &["--cache-from", &format!("type=local,src={}", min.display())],
    );
    assert_eq!(done, 1, "mode=min: deps' RUN runs again: {log}");
    assert!(
        log.contains("echo deps") && log.contains("importing cache"),
        "{log}"
    );
    let c = setup();
    let (log, done, _) = build(
        &c,
        &["--cache-from", &format!("type=local,src={}", max.display())],
    );
    assert_eq!(done, 0, "mode=max: nothing runs: {log}");
}

#[test]
fn ignore_error_makes_a_failed_export_a_warning() {
    if !ready() {
        return;
    }
    let a = setup();
    // A file where the directory should be: the export fails.
    let blocked = a.dir.path().join("blocked");
    fs::write(&blocked, "not a directory").unwrap();
    let to = format!("type=local,dest={}", blocked.display());
    let out = a.build(DOCKERFILE, &["--cache-to", &to]);
    assert!(!out.status.success(), "a failed export fails the build");
    assert!(
        stderr(&out).contains(&format!("local cache {}", blocked.display())),
        "{}",
        stderr(&out)
    );
    let out = a.build(
        DOCKERFILE,
        &["--cache-to", &format!("{to},ignore-error=true")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(ignore-error=true)"),
        "{}",
        stderr(&out)
    );
    // Unknown attributes are refused naming the flag.
    let out = a.build(
        DOCKERFILE,
        &["--cache-to", "type=local,dest=/tmp/x,colour=blue"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--cache-to type=local,dest=/tmp/x,colour=blue: unknown attribute"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn concurrent_local_exports_leave_a_valid_layout() {
    if !ready() {
        return;
    }
    let stores: Vec<Setup> = (0..3).map(|_| setup()).collect();
    let dir = stores[0].dir.path().join("shared");
    std::thread::scope(|scope| {
        for (i, s) in stores.iter().enumerate() {
            let dir = &dir;
            scope.spawn(move || {
                fs::write(s.context.join("version.txt"), format!("{i}\n")).unwrap();
                let to = format!("type=local,dest={},tag=t{i},mode=max", dir.display());
                build(s, &["--cache-to", &to]);
            });
        }
    });
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
    assert_no_temp_files(&dir);
    // Every tag imports whole into a fresh store.
    for i in 0..3 {
        let c = setup();
        fs::write(c.context.join("version.txt"), format!("{i}\n")).unwrap();
        let from = format!("type=local,src={},tag=t{i}", dir.display());
        let (log, done, _) = build(&c, &["--cache-from", &from]);
        assert_eq!(done, 0, "{log}");
    }
}

fn assert_no_temp_files(dir: &Path) {
    for entry in crate::kilnd::walk(dir) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".tmp-"),
            "left behind: {}",
            entry.display()
        );
    }
}

/// A hostile cache directory fails the import with a warning naming it,
/// the build goes on, and nothing outside is read or written.
#[test]
fn a_hostile_local_cache_is_a_warning() {
    if !ready() {
        return;
    }
    let a = setup();
    let good = a.dir.path().join("good");
    build(
        &a,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", good.display()),
        ],
    );
    let import = |dir: &Path| {
        let b = setup();
        let from = format!("type=local,src={}", dir.display());
        let (log, done, _) = build(&b, &["--cache-from", &from]);
        (log, done)
    };
    let copy = |name: &str| {
        let dir = a.dir.path().join(name);
        let status = std::process::Command::new("cp")
            .args(["-a", good.to_str().unwrap(), dir.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        dir
    };

    // A blobs directory that is a symlink to elsewhere.
    let linked = copy("linked");
    let elsewhere = a.dir.path().join("elsewhere");
    fs::rename(linked.join("blobs"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, linked.join("blobs")).unwrap();
    let (log, done) = import(&linked);
    assert!(
        log.contains(&format!(
            "warning: importing cache from local {}",
            linked.display()
        )),
        "{log}"
    );
    assert_eq!(done, 4, "the build went on without the cache: {log}");

    // A blob whose bytes are not its digest.
    let lying = copy("lying");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(lying.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            lying
                .join("blobs/sha256")
                .join(manifest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer = lying
        .join("blobs/sha256")
        .join(layer.strip_prefix("sha256:").unwrap());
    // Of the size the manifest says (a longer or shorter one stops at
    // the size), so that only the digest tells.
    let size = fs::metadata(&layer).unwrap().len() as usize;
    fs::write(&layer, vec![b'x'; size]).unwrap();
    let (log, _) = import(&lying);
    assert!(log.contains("importing cache from local"), "{log}");
    assert!(log.contains("mismatch") || log.contains("digest"), "{log}");
    fs::write(&layer, b"not the layer").unwrap();
    let (log, _) = import(&lying);
    assert!(log.contains("where the manifest says"), "{log}");

    // A huge index.json is refused before it is read whole.
    let huge = copy("huge");
    let file = fs::File::create(huge.join("index.json")).unwrap();
    file.set_len(64 << 20).unwrap();
    let (log, done) = import(&huge);
    assert!(log.contains("index.json is over"), "{log}");
    assert_eq!(done, 4, "{log}");

    // An index.json that is a symlink out is not followed.
    let escaping = copy("escaping");
    fs::remove_file(escaping.join("index.json")).unwrap();
    std::os::unix::fs::symlink(good.join("index.json"), escaping.join("index.json")).unwrap();
    let (log, done) = import(&escaping);
    assert!(log.contains("Too many levels of symbolic links"), "{log}");
    assert_eq!(done, 4, "{log}");

    // An export into a directory whose blobs are a symlink writes nothing
    // through it.
    let target = a.dir.path().join("target");
    fs::create_dir_all(target.join("sha256")).unwrap();
    let trap = a.dir.path().join("trap");
    fs::create_dir(&trap).unwrap();
    std::os::unix::fs::symlink(&target, trap.join("blobs")).unwrap();
    let out = a.build(
        DOCKERFILE,
        &["--cache-to", &format!("type=local,dest={}", trap.display())],
    );
    assert!(!out.status.success());
    assert_eq!(fs::read_dir(target.join("sha256")).unwrap().count(), 0);
}

/// `type=inline` (and `BUILDKIT_INLINE_CACHE=1`): the image pushed with
/// its records; `--cache-from REF` on a fresh store reuses its layers.
#[test]
fn inline_cache_comes_back_from_the_pushed_image() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::start(None);
    for (n, how) in [
        ["--cache-to", "type=inline"],
        ["--build-arg", "BUILDKIT_INLINE_CACHE=1"],
    ]
    .iter()
    .enumerate()
    {
        let image = format!("{}/inline/app:{n}", registry.addr);
        let a = setup();
        let (log, _, _) = build(
            &a,
            &[
                how[0],
                how[1],
                "-t",
                &image,
                "--output",
                "type=image,push=true",
            ],
        );
        assert!(log.contains("pushing"), "{log}");
        let config = crate::harness::run(std::process::Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--config",
            "--raw",
            &format!("docker://{image}"),
        ]));
        let config = String::from_utf8_lossy(&config.stdout);
        assert!(config.contains("kiln.buildcache.inline.v1"), "{config}");
        let b = setup();
        let (log, done, cached) = build(&b, &["--cache-from", &image, "-t", "app:1"]);
        // The image's own steps come back; deps' RUN is not in the image.
        assert_eq!((done, cached), (1, 3), "{log}");
        assert!(
            log.contains(&format!("importing cache from {image}: 3 steps")),
            "{log}"
        );
    }
    // mode=max is not possible inline: a warning, and min.
    let a = setup();
    let out = a.build(DOCKERFILE, &["--cache-to", "type=inline,mode=max"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("supports mode=min only"),
        "{}",
        stderr(&out)
    );
}

/// Through kilnd the inline cache is written by kilnd and pushed by it.
#[test]
fn inline_cache_through_kilnd() {
    if !registry_ready() {
        return;
    }
    let registry = Registry::start(None);
    let image = format!("{}/inline/kilnd:1", registry.addr);
    let a = setup();
    let kilnd = crate::kilnd::Kilnd::start(&a);
    let addr = kilnd.addr();
    build(
        &a,
        &[
            "--addr",
            &addr,
            "--cache-to",
            "type=inline",
            "-t",
            &image,
            "--output",
            "type=image,push=true",
        ],
    );
    let b = setup();
    let (log, done, cached) = build(&b, &["--cache-from", &image]);
    assert_eq!((done, cached), (1, 3), "{log}");
}

/// moto's S3 server on a loopback port, stopped when dropped. With
/// `verify`, it checks every request's SigV4 signature against the access
/// key it made (`INITIAL_NO_AUTH_ACTION_COUNT`: only the setup's first
/// three calls, which make the IAM user, its policy and its key, go
/// unchecked). moto 5.2's checker miscomputes the signature of a key
/// holding `:` (boto3's own requests fail it too), as every blob key
/// (`sha256:…`, BuildKit's layout) does: the round trips use a server
/// that does not check, and the checking one is asked only for a manifest
/// (by a store that holds its blobs).
pub(crate) struct Moto {
    child: std::process::Child,
    port: u16,
    pub(crate) key_id: String,
    pub(crate) secret: String,
}

impl Moto {
    pub(crate) fn start(verify: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = std::process::Command::new("python3");
        command.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        if verify {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "3");
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto's server");
        kiln_testing::wait_until(std::time::Duration::from_secs(60), "moto's server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let mut moto = Self {
            child,
            port,
            key_id: "setup".into(),
            secret: "setup".into(),
        };
        if !verify {
            moto.python("boto3.client('s3', **kw).create_bucket(Bucket='kiln-cache')\n");
            return moto;
        }
        let keys = moto.python(
            "import json\n\
             iam = boto3.client('iam', **kw)\n\
             iam.create_user(UserName='kiln')\n\
             iam.put_user_policy(UserName='kiln', PolicyName='s3', PolicyDocument=json.dumps(\
             {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': 's3:*', 'Resource': '*'}]}))\n\
             k = iam.create_access_key(UserName='kiln')['AccessKey']\n\
             print(k['AccessKeyId'], k['SecretAccessKey'])\n",
        );
        let (id, secret) = keys.trim().split_once(' ').expect("a key");
        (moto.key_id, moto.secret) = (id.to_owned(), secret.to_owned());
        moto.python("boto3.client('s3', **kw).create_bucket(Bucket='kiln-cache')\n");
        moto
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `code` with boto3 and `kw` (this server, the key); its stdout.
    pub(crate) fn python(&self, code: &str) -> String {
        let prelude = format!(
            "import boto3\nkw = dict(endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='{}', aws_secret_access_key='{}')\n",
            self.endpoint(),
            self.key_id,
            self.secret
        );
        let out = crate::harness::run(
            std::process::Command::new("python3").args(["-c", &format!("{prelude}{code}")]),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts `body` at `key` in the bucket.
    fn put(&self, key: &str, body: &str) {
        self.python(&format!(
            "boto3.client('s3', **kw).put_object(Bucket='kiln-cache', Key='{key}', Body={body:?})\n"
        ));
    }

    /// The object at `key` in the bucket.
    fn object(&self, key: &str) -> String {
        self.python(&format!(
            "import sys\nsys.stdout.write(boto3.client('s3', **kw).get_object(Bucket='kiln-cache', \
             Key='{key}')['Body'].read().decode())\n"
        ))
    }
}
impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `type=s3` against a real S3-compatible server: BuildKit's layout (a
/// manifest per name, blobs by digest under their prefixes), credentials
/// from the environment embedded and from attributes through kilnd.
#[test]
fn s3_cache_round_trips_embedded_and_through_kilnd() {
    if !require(&[Need::Root, Need::Busybox, Need::PythonMoto]) {
        return;
    }
    let moto = Moto::start(false);
    let s3 = format!(
        "type=s3,bucket=kiln-cache,region=us-east-1,endpoint_url={},use_path_style=true,prefix=ci/,name=app;app-latest",
        moto.endpoint()
    );
    let (a, b) = (setup(), setup());
    let keys = [
        ("AWS_ACCESS_KEY_ID", moto.key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", moto.secret.as_str()),
    ];
    let with_env = |s: &Setup, args: &[&str]| {
        let mut all = vec![
            "build",
            "--progress=plain",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1600000000",
        ];
        all.extend_from_slice(args);
        fs::write(s.context.join("Dockerfile"), DOCKERFILE).unwrap();
        all.push(s.context.to_str().unwrap());
        let out = crate::harness::run(
            crate::harness::kiln()
                .env("KILN_ROOT", &s.root)
                .envs(keys)
                .args(&all),
        );
        let log = stderr(&out);
        assert!(out.status.success(), "{log}");
        log
    };
    let log = with_env(
        &a,
        &["--cache-to", &format!("{s3},mode=max"), "-t", "app:1"],
    );
    assert!(
        log.contains("exporting cache to s3 bucket kiln-cache done"),
        "{log}"
    );
    for name in ["app", "app-latest"] {
        let manifest = moto.object(&format!("ci/manifests/{name}"));
        assert!(
            manifest.contains("application/vnd.kiln.buildcache.config.v1+json"),
            "{manifest}"
        );
    }
    let log = with_env(&b, &["--cache-from", &s3, "-t", "app:1"]);
    assert_eq!(log.matches(" DONE").count(), 0, "{log}");
    assert_eq!(digest(&a, &[], "app:1"), digest(&b, &[], "app:1"));

    // Through kilnd, the client's attributes carry the credentials.
    let c = setup();
    let kilnd = crate::kilnd::Kilnd::start(&c);
    let addr = kilnd.addr();
    let attrs = format!(
        "{s3},access_key_id={},secret_access_key={}",
        moto.key_id, moto.secret
    );
    let (log, done, cached) = build(&c, &["--addr", &addr, "--cache-from", &attrs]);
    assert!(
        log.contains("importing cache from s3 bucket kiln-cache"),
        "{log}"
    );
    assert_eq!((done, cached), (0, 4), "{log}");
    let (log, _, _) = build(
        &c,
        &[
            "--addr",
            &addr,
            "--cache-to",
            &format!("{attrs},name=from-kilnd"),
        ],
    );
    assert!(
        log.contains("exporting cache to s3 bucket kiln-cache done"),
        "{log}"
    );
    let manifest = moto.object("ci/manifests/from-kilnd");
    assert!(
        manifest.contains("application/vnd.kiln.buildcache.config.v1+json"),
        "{manifest}"
    );

    // A server that checks signatures takes kiln's and refuses a wrong
    // secret's (see [`Moto`] for why it is asked only for the manifest).
    let checking = Moto::start(true);
    checking.put("ci/manifests/app", &moto.object("ci/manifests/app"));
    let at = s3.replace(&moto.endpoint(), &checking.endpoint());
    let right = format!(
        "{at},access_key_id={},secret_access_key={}",
        checking.key_id, checking.secret
    );
    let (log, _, _) = build(&c, &["--addr", &addr, "--cache-from", &right]);
    // The store holds the blobs already: only the manifest is read.
    assert!(
        log.contains("importing cache from s3 bucket kiln-cache: 4 steps"),
        "{log}"
    );
    let wrong = format!(
        "{at},access_key_id={},secret_access_key=wrong",
        checking.key_id
    );
    let (log, _, _) = build(&c, &["--addr", &addr, "--cache-from", &wrong]);
    assert!(
        log.contains("reading ci/manifests/app: HTTP 403 SignatureDoesNotMatch"),
        "{log}"
    );

    // A missing bucket is a warning naming it.
    let missing = s3.replace("kiln-cache", "no-such-bucket");
    let (log, _, _) = build(
        &c,
        &[
            "--addr",
            &addr,
            "--cache-from",
            &format!("{missing},access_key_id=t,secret_access_key=t"),
        ],
    );
    assert!(log.contains("s3 bucket no-such-bucket"), "{log}");
}
