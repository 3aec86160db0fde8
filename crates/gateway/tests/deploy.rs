//! The deployment files (docker-compose.yml, Dockerfile, deploy/nginx.conf,
//! config/cluster.toml) are checked against the configuration keys and ports, since no
//! Docker engine runs where the tests run.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use gateway::config::{Config, RouterBackend, StoreBackend};
use std::path::{Path, PathBuf};
use yaml_rust2::{Yaml, YamlLoader};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `section.key` names of every configuration key.
fn config_keys() -> Vec<String> {
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut keys = vec!["auth.jwt_secret".to_owned()];
    for (section, table) in value.as_table().unwrap() {
        for key in table.as_table().unwrap().keys() {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys
}

fn env_of(service: &Yaml) -> Vec<(String, String)> {
    let env = &service["environment"];
    env.as_hash()
        .unwrap_or_else(|| panic!("environment must be a map"))
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("unexpected env value {other:?}"),
            };
            (k.as_str().unwrap().to_owned(), value)
        })
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

#[test]
fn cluster_toml_is_valid_configuration() {
    let c = Config::load(Some(&repo("config/cluster.toml"))).unwrap();
    assert_eq!(c.store.backend, StoreBackend::Scylla);
    assert_eq!(c.router.backend, RouterBackend::Redis);
}

#[test]
fn compose_file_matches_the_configuration() {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    let compose = &docs[0];
    let services = &compose["services"];
    for name in ["scylla", "redis", "chatd-1", "chatd-2", "lb"] {
        assert!(!services[name].is_badvalue(), "service {name} is missing");
    }
    let keys = config_keys();
    let cluster = Config::load(Some(&repo("config/cluster.toml"))).unwrap();
    let mut node_ids = Vec::new();
    for name in ["chatd-1", "chatd-2"] {
        let svc = &services[name];
        assert_eq!(
            svc["build"].as_str(),
            Some("."),
            "{name} is built from the Dockerfile"
        );
        let env = env_of(svc);
        for (var, value) in &env {
            let rest = var
                .strip_prefix("CHATD_")
                .unwrap_or_else(|| panic!("{name}: {var} is not a CHATD_ variable"));
            let (section, key) = rest
                .split_once("__")
                .unwrap_or_else(|| panic!("{name}: {var} lacks SECTION__KEY"));
            let dotted = format!("{}.{}", section.to_lowercase(), key.to_lowercase());
            assert!(
                keys.contains(&dotted),
                "{name}: {var} is not a configuration key"
            );
            match dotted.as_str() {
                "server.listen" => {
                    assert_eq!(port_of(value), 8080);
                    let exposed: Vec<i64> = svc["expose"]
                        .as_vec()
                        .unwrap()
                        .iter()
                        .map(|p| p.as_str().unwrap().parse().unwrap())
                        .collect();
                    assert!(
                        exposed.contains(&8080),
                        "{name} must expose its listen port"
                    );
                }
                "router.redis_url" => {
                    assert!(value.starts_with("redis://redis:"), "{value}");
                    let published = services["redis"]["ports"][0].as_str().unwrap();
                    assert!(published.ends_with(&format!(":{}", port_of(value))));
                }
                "store.cql_nodes" => {
                    let nodes: Vec<String> = serde_json::from_str(value).unwrap();
                    assert_eq!(nodes, cluster.store.cql_nodes);
                    let published = services["scylla"]["ports"][0].as_str().unwrap();
                    assert!(published.ends_with(":9042"));
                }
                "router.node_id" => node_ids.push(value.clone()),
                _ => {}
            }
        }
        assert!(
            env.iter().any(|(k, _)| k == "CHATD_AUTH__JWT_SECRET"),
            "{name} needs the shared secret"
        );
    }
    node_ids.sort();
    node_ids.dedup();
    assert_eq!(node_ids.len(), 2, "every node needs its own node id");
    // The load balancer publishes the port clients use and proxies to both nodes.
    assert_eq!(services["lb"]["ports"][0].as_str(), Some("8080:8080"));
    let nginx = read("deploy/nginx.conf");
    for node in ["chatd-1:8080", "chatd-2:8080"] {
        assert!(
            nginx.contains(&format!("server {node};")),
            "nginx must proxy to {node}"
        );
    }
    assert!(nginx.contains("proxy_set_header Upgrade $http_upgrade"));
    assert!(nginx.contains("proxy_http_version 1.1"));
}

#[test]
fn dockerfile_builds_the_server_with_the_cluster_config() {
    let d = read("Dockerfile");
    assert!(d.contains("-p gateway --bin chatd"));
    assert!(d.contains("/etc/chatd/cluster.toml"));
    assert!(repo("config/cluster.toml").exists());
    assert!(d.contains("EXPOSE 8080"));
}

#[test]
fn monitoring_files_are_consistent() {
    let docs = YamlLoader::load_from_str(&read("docker-compose.yml")).unwrap();
    let services = &docs[0]["services"];
    // Every node serves /metrics on 9090 inside the network, is probed on /readyz, and gets
    // longer than its drain to stop.
    let d = Config::default().server;
    let drain = d.drain_delay_secs + d.drain_window_secs + d.shutdown_grace_ms / 1000;
    for name in ["chatd-1", "chatd-2"] {
        let svc = &services[name];
        let env = env_of(svc);
        let listen = env
            .iter()
            .find(|(k, _)| k == "CHATD_METRICS__LISTEN")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{name} must set CHATD_METRICS__LISTEN"));
        assert_eq!(port_of(&listen), 9090);
        assert!(svc["expose"]
            .as_vec()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some("9090")));
        let probe = format!("{:?}", svc["healthcheck"]["test"]);
        assert!(probe.contains("/readyz"), "{name}: {probe}");
        let grace: u64 = svc["stop_grace_period"]
            .as_str()
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            grace > drain,
            "{name}: stop_grace_period {grace}s <= drain {drain}s"
        );
    }
    // Prometheus scrapes both nodes there.
    let prom = YamlLoader::load_from_str(&read("deploy/prometheus.yml")).unwrap();
    let job = &prom[0]["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    let targets: Vec<&str> = job["static_configs"][0]["targets"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(targets, ["chatd-1:9090", "chatd-2:9090"]);
    // Grafana mounts files that exist, and the dashboard only uses documented metrics.
    for v in services["grafana"]["volumes"].as_vec().unwrap() {
        let host = v.as_str().unwrap().split(':').next().unwrap();
        assert!(repo(host).exists(), "{host} is missing");
    }
    let ops = read("docs/OPERATIONS.md");
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/chatd.json")).unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("chatd_") {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    assert!(
                        ops.contains(&format!("`chatd_{base}`")),
                        "the dashboard uses chatd_{base}, not documented in docs/OPERATIONS.md"
                    );
                }
            }
        }
    }
    let nginx = read("deploy/nginx.conf");
    assert!(nginx.contains("proxy_next_upstream error timeout http_503;"));
}
