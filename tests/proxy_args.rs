//! Proxy build args (issue 14, item 23): as BuildKit, a RUN step gets each
//! proxy given as a build arg in both spellings (`HTTP_PROXY` and
//! `http_proxy`), and neither the cache key, the image config nor its
//! history holds them.

use std::fs;

use crate::busybox::{Setup, ready};

#[test]
fn proxies_reach_run_in_both_spellings_and_nothing_else() {
    if !ready() {
        return;
    }
    let s = Setup::new();
    let dockerfile = "FROM base:busybox\nRUN env | grep -i _proxy= | sort > /proxies\n";
    let build = |proxy: &str| {
        let http_proxy = format!("http_proxy={proxy}");
        let args = [
            "-t",
            "proxied:latest",
            "--build-arg",
            http_proxy.as_str(),
            "--build-arg",
            "NO_PROXY=localhost",
        ];
        fs::read_to_string(s.build_to_dir(dockerfile, &args).join("proxies")).unwrap()
    };
    assert_eq!(
        build("http://proxy.example:3128"),
        "HTTP_PROXY=http://proxy.example:3128\nNO_PROXY=localhost\n\
         http_proxy=http://proxy.example:3128\nno_proxy=localhost\n"
    );
    // Another proxy is not another step: the layer is the cached one.
    assert_eq!(
        build("http://other.example:8080"),
        "HTTP_PROXY=http://proxy.example:3128\nNO_PROXY=localhost\n\
         http_proxy=http://proxy.example:3128\nno_proxy=localhost\n"
    );
    let out = s.build(
        dockerfile,
        &[
            "-t",
            "proxied:latest",
            "--build-arg",
            "http_proxy=http://proxy.example:3128",
        ],
    );
    assert!(out.status.success());
    let (inspect, _) = s.ok(&["inspect", "proxied:latest"]);
    assert!(!inspect.contains("proxy.example"), "{inspect}");
}
