use super::*;

#[test]
fn hostnames_are_rfc_1123_labels_of_at_most_64_bytes() {
    for good in ["kiln", "build-01", "a.b.example", "X9", &"a".repeat(63)] {
        assert_eq!(check_hostname(good), Ok(()), "{good}");
    }
    let long = format!("{}.{}", "a".repeat(32), "b".repeat(32));
    for bad in [
        "",
        "a_b",
        "-a",
        "a-",
        "a..b",
        "a.",
        "a b",
        "a\nb",
        "ünï",
        long.as_str(),
        &"a".repeat(64),
    ] {
        let err = check_hostname(bad).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid BUILDKIT_SANDBOX_HOSTNAME"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn add_host_takes_both_separators_and_both_ip_families() {
    let cases = [
        ("db:10.0.0.5", "db", "10.0.0.5"),
        ("db=10.0.0.5", "db", "10.0.0.5"),
        ("my_db.local:10.0.0.5", "my_db.local", "10.0.0.5"),
        ("v6:::1", "v6", "::1"),
        ("v6=::1", "v6", "::1"),
        ("v6:[fd00::5]", "v6", "fd00::5"),
        ("v6=[fd00::5]", "v6", "fd00::5"),
        ("v6=fd00::5", "v6", "fd00::5"),
    ];
    for (spec, host, ip) in cases {
        let parsed = ExtraHost::parse(spec).unwrap();
        assert_eq!(parsed.host(), host, "{spec}");
        assert_eq!(parsed.ip().to_string(), ip, "{spec}");
    }
    assert_eq!(
        ExtraHost::parse("db:10.0.0.5").unwrap().hosts_line(),
        "10.0.0.5\tdb"
    );
}

#[test]
fn add_host_refuses_what_would_break_etc_hosts() {
    for (spec, why) in [
        ("db", "HOST:IP"),
        (":10.0.0.5", "no host name"),
        ("db:", "not an IPv4 or IPv6"),
        ("db:10.0.0.256", "not an IPv4 or IPv6"),
        ("db:example.com", "not an IPv4 or IPv6"),
        ("db:[10.0.0.5", "not an IPv4 or IPv6"),
        ("a b:10.0.0.5", "only letters"),
        ("a\nb=10.0.0.5", "only letters"),
        ("a#b=10.0.0.5", "only letters"),
        ("-a=10.0.0.5", "starts with"),
        ("a..b=10.0.0.5", "empty label"),
        ("db:host-gateway", "host-gateway is not supported"),
        ("db=host-gateway", "host-gateway is not supported"),
    ] {
        let err = ExtraHost::parse(spec).unwrap_err().to_string();
        assert!(err.starts_with("invalid --add-host"), "{spec}: {err}");
        assert!(err.contains(why), "{spec}: {err}");
    }
    let long = format!("{}=10.0.0.5", "a".repeat(254));
    assert!(ExtraHost::parse(&long).is_err());
    assert!(ExtraHost::new("db", "10.0.0.5").is_ok());
    assert!(ExtraHost::new("db\n10.0.0.6 evil", "10.0.0.5").is_err());
}

#[test]
fn ulimits_parse_as_docker_reads_them() {
    let nofile = Ulimit::parse("nofile=1024:2048").unwrap();
    assert_eq!(
        (nofile.name(), nofile.soft(), nofile.hard()),
        (UlimitName::Nofile, 1024, 2048)
    );
    let nproc = Ulimit::parse("nproc=512").unwrap();
    assert_eq!((nproc.soft(), nproc.hard()), (512, 512));
    let core = Ulimit::parse("core=-1").unwrap();
    assert_eq!((core.soft(), core.hard()), (-1, -1));
    let up_to_unlimited = Ulimit::parse("stack=8192:-1").unwrap();
    assert_eq!((up_to_unlimited.soft(), up_to_unlimited.hard()), (8192, -1));
    for (name, _) in UlimitName::ALL {
        let spec = format!("{}=1", name.as_str());
        assert_eq!(Ulimit::parse(&spec).unwrap().name(), name);
    }
}

#[test]
fn ulimits_refuse_unknown_names_and_soft_above_hard() {
    for (spec, why) in [
        ("nofile", "NAME=SOFT[:HARD]"),
        ("files=1", "unknown name \"files\""),
        ("NOFILE=1", "unknown name"),
        ("as=1", "unknown name"),
        (
            "nofile=2048:1024",
            "soft limit 2048 is above the hard limit 1024",
        ),
        (
            "nofile=-1:1024",
            "soft limit -1 is above the hard limit 1024",
        ),
        ("nofile=-2", "at least 0"),
        ("nofile=x", "not a number"),
        ("nofile=1:", "not a number"),
        ("nofile=99999999999999999999", "not a number"),
    ] {
        let err = Ulimit::parse(spec).unwrap_err().to_string();
        assert!(err.starts_with("invalid --ulimit"), "{spec}: {err}");
        assert!(err.contains(why), "{spec}: {err}");
    }
}

#[test]
fn the_last_ulimit_of_a_name_wins_in_name_order() {
    let merged = Ulimit::merge(
        ["nproc=10", "nofile=1", "nproc=20"]
            .iter()
            .map(|s| Ulimit::parse(s).unwrap()),
    );
    let specs: Vec<(UlimitName, i64)> = merged.iter().map(|u| (u.name(), u.soft())).collect();
    assert_eq!(specs, [(UlimitName::Nofile, 1), (UlimitName::Nproc, 20)]);
}

#[test]
fn shm_sizes_are_bytes_with_binary_units() {
    for (text, bytes) in [
        ("0", 0),
        ("65536", 65536),
        ("64m", 64 << 20),
        ("64M", 64 << 20),
        ("64mb", 64 << 20),
        ("64MiB", 64 << 20),
        ("64 m", 64 << 20),
        ("1g", 1 << 30),
        ("1.5g", 3 << 29),
        ("2k", 2048),
        ("10b", 10),
        ("1t", 1 << 40),
    ] {
        assert_eq!(parse_shm_size(text), Ok(bytes), "{text}");
    }
    for bad in [
        "", "m", "-1", "1x", "1.2.3g", ".5g", "1e3", "inf", "nan", "9000p",
    ] {
        let err = parse_shm_size(bad).unwrap_err().to_string();
        assert!(err.starts_with("invalid --shm-size"), "{bad}: {err}");
    }
}

#[test]
fn options_travel_through_an_exec_meta_unchanged() {
    let options = SandboxOptions {
        hostname: Some("builder".into()),
        extra_hosts: vec![
            ExtraHost::parse("db:10.0.0.5").unwrap(),
            ExtraHost::parse("v6=[fd00::5]").unwrap(),
        ],
        ulimits: vec![Ulimit::parse("nofile=1024:2048").unwrap()],
        shm_size: Some(128 << 20),
    };
    let mut meta = crate::ops::v1::Meta::default();
    options.fill_meta(&mut meta);
    assert_eq!(SandboxOptions::from_meta(&meta), Ok(options));
    assert_eq!(
        SandboxOptions::from_meta(&crate::ops::v1::Meta::default()),
        Ok(SandboxOptions::default())
    );
    meta.hostname = "bad_name".into();
    assert!(SandboxOptions::from_meta(&meta).is_err());
}

#[test]
fn flags_make_options_and_name_the_bad_one() {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let options = SandboxOptions::from_flags(
        &strings(&["db:10.0.0.5"]),
        &strings(&["nproc=10", "nproc=20"]),
        Some("1g"),
    )
    .unwrap();
    assert_eq!(options.extra_hosts.len(), 1);
    assert_eq!(options.ulimits.len(), 1);
    assert_eq!(options.ulimits[0].soft(), 20);
    assert_eq!(options.shm_size, Some(1 << 30));
    for shm in [None, Some(""), Some("0")] {
        assert_eq!(
            SandboxOptions::from_flags(&[], &[], shm),
            Ok(SandboxOptions::default())
        );
    }
    let err = SandboxOptions::from_flags(&[], &strings(&["bogus=1"]), None).unwrap_err();
    assert!(err.to_string().starts_with("invalid --ulimit"), "{err}");
}
