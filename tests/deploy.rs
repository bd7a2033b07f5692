//! deploy/kubernetes's manifests, read as a YAML parser reads them (PyYAML,
//! each document as JSON): every document is a Kubernetes object, and what
//! must agree between a container's flags and its pod does — so that they
//! cannot drift apart:
//! - a worker's `terminationGracePeriodSeconds` is above its
//!   `--drain-timeout` (else Kubernetes kills a drain midway), and it has
//!   no preStop hook (SIGTERM itself drains);
//! - every probe asks the port of the container's `--metrics-addr`, on the
//!   paths that serve it (`/readyz`, `/healthz`), and the Prometheus
//!   annotations name that port too;
//! - the autoscaler and the disruption budget are on the worker's
//!   Deployment, and the metrics the autoscaler reads are the ones
//!   prometheus-adapter's rules serve.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kiln_testing::{Need, require};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every document of every manifest, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no manifests in {}",
        deploy_dir().display()
    );
    files
        .iter()
        .flat_map(|file| {
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            yaml_documents(file)
                .into_iter()
                .map(move |doc| (name.clone(), doc))
        })
        .collect()
}

/// `file`'s YAML documents, parsed by PyYAML (safe_load_all) as JSON.
fn yaml_documents(file: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             with open(sys.argv[1]) as f:\n    \
             print(json.dumps([d for d in yaml.safe_load_all(f) if d is not None]))",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not parse: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn text<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not text in {v}"))
}

fn find<'d>(docs: &'d [(String, Value)], kind: &str, name: &str) -> &'d Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

/// The value of `--flag=VALUE` in a container's args.
fn flag<'c>(container: &'c Value, flag: &str) -> Option<&'c str> {
    let prefix = format!("{flag}=");
    container["args"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .find_map(|arg| arg.strip_prefix(&prefix))
}

/// The port number a probe's or annotation's `port` names in `container`:
/// a number, or the name of one of its ports.
fn port_number(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap_or_else(|| panic!("port {port}"));
    if let Ok(n) = name.parse() {
        return n;
    }
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port named {name} in {}", container["name"]))
}

/// A Deployment's one container, and its pod template.
fn container_of(deployment: &Value) -> (&Value, &Value) {
    let pod = &deployment["spec"]["template"];
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{}", deployment["metadata"]["name"]);
    (&containers[0], pod)
}

/// The probes and the scrape annotation of `deployment` ask its
/// container's `--metrics-addr` port, on the paths it serves.
fn probes_ask_the_metrics_port(deployment: &Value) {
    let (container, pod) = container_of(deployment);
    let who = text(container, "/name");
    let addr =
        flag(container, "--metrics-addr").unwrap_or_else(|| panic!("{who} has no --metrics-addr"));
    let port: u64 = addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{who}: --metrics-addr {addr} is not HOST:PORT"));
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{who}'s {probe}");
        assert_eq!(
            port_number(container, &get["port"]),
            port,
            "{who}'s {probe} asks --metrics-addr's port"
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{who}");
    assert_eq!(
        annotations["prometheus.io/port"],
        port.to_string(),
        "{who}'s scrape annotation names --metrics-addr's port"
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{who}");
}

#[test]
fn kubernetes_manifests_agree_with_the_flags_they_run() {
    if !require(&[Need::PythonYaml]) {
        return;
    }
    let docs = documents();
    for (file, doc) in &docs {
        for field in ["/apiVersion", "/kind", "/metadata/name"] {
            assert!(
                doc.pointer(field).and_then(Value::as_str).is_some(),
                "{file}: a document without {field}: {doc}"
            );
        }
    }

    let worker = find(&docs, "Deployment", "kiln-worker");
    let (container, pod) = container_of(worker);
    let drain = flag(container, "--drain-timeout").expect("the worker's --drain-timeout");
    let drain = kiln_frontend::instructions::parse_go_duration(drain)
        .map(|n| Duration::from_nanos(u64::try_from(n).unwrap()))
        .unwrap_or_else(|e| panic!("--drain-timeout={drain}: {e}"));
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("the worker's terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > drain,
        "terminationGracePeriodSeconds {grace} must exceed --drain-timeout {drain:?}"
    );
    assert!(
        container.pointer("/lifecycle/preStop").is_none(),
        "SIGTERM drains the worker: no preStop hook"
    );
    probes_ask_the_metrics_port(worker);
    probes_ask_the_metrics_port(find(&docs, "Deployment", "kilnd"));

    // The autoscaler and the budget are the worker Deployment's.
    let labels = &worker["spec"]["template"]["metadata"]["labels"];
    let hpa = find(&docs, "HorizontalPodAutoscaler", "kiln-worker");
    assert_eq!(text(hpa, "/apiVersion"), "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "kiln-worker");
    let pdb = find(&docs, "PodDisruptionBudget", "kiln-worker");
    for (key, value) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[key], value, "the budget selects the workers");
    }

    // What the autoscaler reads, prometheus-adapter serves.
    let mut wanted = BTreeSet::new();
    for metric in hpa["spec"]["metrics"].as_array().unwrap() {
        match text(metric, "/type") {
            "External" => wanted.insert(("externalRules", text(metric, "/external/metric/name"))),
            "Pods" => wanted.insert(("rules", text(metric, "/pods/metric/name"))),
            other => panic!("an autoscaler metric of type {other}"),
        };
    }
    assert!(
        wanted.contains(&("externalRules", "kiln_farm_queue_depth")),
        "driven by kilnd's queue: {wanted:?}"
    );
    let adapter = find(&docs, "ConfigMap", "prometheus-adapter");
    let config = std::env::temp_dir().join(format!("kiln-adapter-{}.yaml", std::process::id()));
    std::fs::write(&config, text(adapter, "/data/config.yaml")).unwrap();
    let parsed = yaml_documents(&config);
    let _ = std::fs::remove_file(&config);
    for (rules, name) in &wanted {
        let served = parsed[0][rules]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                rule["name"]["as"] == *name
                    && text(rule, "/seriesQuery").starts_with(&format!("{name}{{"))
            });
        assert!(served, "prometheus-adapter's {rules} serve {name}");
    }
}
