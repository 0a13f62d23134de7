//! The shipped service definitions (tcptrace/deploy/) must start a tcptrace that accepts its
//! arguments: the systemd unit's ExecStart and the DaemonSet's container args are parsed with the
//! real command line, and the manifest's structure is checked.
use clap::Parser as _;
use tcptrace::cli::Cli;
use yaml_rust2::{Yaml, YamlLoader};

fn deploy(name: &str) -> String {
    let path = format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `key=value` lines of one `[section]` of a systemd unit.
fn unit_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut cur = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            cur = s.to_string();
        } else if cur == section {
            let (k, v) = line.split_once('=').expect("key=value");
            out.push((k.to_string(), v.to_string()));
        }
    }
    out
}

#[test]
fn systemd_unit_starts_a_valid_tcptrace() {
    let text = deploy("tcptrace.service");
    let service = unit_section(&text, "Service");
    let get = |k: &str| {
        service
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("[Service] has no {k}"))
    };
    let exec = get("ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert!(argv[0].ends_with("/tcptrace"), "{exec}");
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{exec}: {e}"));
    assert!(cli.common.metrics_addr.is_some(), "the unit serves metrics");
    let caps = get("CapabilityBoundingSet");
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN"] {
        assert!(caps.contains(cap), "{cap} missing from {caps}");
    }
    // Files it writes are where the unit lets it write.
    let state = get("StateDirectory");
    assert!(exec.contains(&format!("/var/lib/{state}/")), "{exec}");
    assert!(!unit_section(&text, "Install").is_empty());
    assert!(!unit_section(&text, "Unit").is_empty());
}

#[test]
fn daemonset_runs_a_valid_tcptrace_with_what_it_needs() {
    let docs = YamlLoader::load_from_str(&deploy("daemonset.yaml")).expect("valid YAML");
    let d = &docs[0];
    assert_eq!(d["kind"].as_str(), Some("DaemonSet"));
    assert_eq!(d["apiVersion"].as_str(), Some("apps/v1"));
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"].as_bool(), Some(true));
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let c = &spec["containers"][0];
    let mut argv: Vec<String> = c["command"]
        .as_vec()
        .expect("command")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    argv.extend(
        c["args"]
            .as_vec()
            .expect("args")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string)),
    );
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let metrics = cli.common.metrics_addr.expect("serves metrics");
    let port = c["ports"][0]["containerPort"]
        .as_i64()
        .expect("metrics port");
    assert_eq!(i64::from(metrics.port()), port);
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    let added: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_vec()
        .expect("capabilities")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for cap in ["BPF", "PERFMON", "SYS_ADMIN"] {
        assert!(added.contains(&cap), "{cap} not added: {added:?}");
    }
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    for p in ["/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup"] {
        assert!(mounts.contains(&p), "{p} not mounted: {mounts:?}");
    }
}
