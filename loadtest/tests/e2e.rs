//! End-to-end: the harness drives a real chatd node with a short scenario, finds every
//! delivery, and writes the JSON report and the SVG plots; and it fails (non-zero exit)
//! when deliveries are missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn loadtest() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    c.env("LOADTEST_LOG", "warn");
    c
}

/// The harness run against a testkit node (`--target`, its signing secret) writing to `out`.
fn loadtest_against(node: &testkit::Node, out: &Path, args: &[&str]) -> std::process::Output {
    loadtest()
        .args(args)
        .args(["--no-progress", "--target"])
        .arg(node.addr.to_string())
        .arg("--jwt-secret")
        .arg(testkit::SECRET)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

fn scenario(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
        .display()
        .to_string()
}

fn read_report(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// Asserts that the harness exited with success; returns its standard output.
fn succeeded(result: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(
        result.status.success(),
        "loadtest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    stdout
}

fn assert_plots(dir: &Path) {
    for f in [
        "latency_over_time.svg",
        "latency_histogram.svg",
        "throughput.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|_| panic!("{f} written"));
        assert!(svg.contains("<svg"), "{f} is an SVG");
    }
}

#[test]
fn churn_against_a_spawned_node_is_complete_and_compared_with_the_ceiling() {
    let out = tempfile::tempdir().unwrap();
    let result = loadtest()
        .arg(scenario("smoke.toml"))
        .arg("--spawn-server")
        .arg(testkit::chatd_bin())
        .args(["--ceiling", "--no-progress", "--duration", "2", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = succeeded(&result);
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(stdout.contains("chatd vs bare broadcaster"), "{stdout}");
    let combined = read_report(out.path());
    assert!(combined["comparison"]["throughput_ratio"].as_f64().unwrap() > 0.0);
    // Both servers were spawned, so both were sampled: CPU per delivery is compared too.
    assert!(
        combined["comparison"]["cpu_ratio"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{}",
        combined["comparison"]
    );
    for target in ["chatd", "ceiling"] {
        let dir = out.path().join(target);
        let r = read_report(&dir);
        let c = &r["completeness"];
        if target == "chatd" {
            assert_eq!(c["lost"], 0, "{target}: {c}");
        } else if c["lost"].as_u64().unwrap() > 0 {
            // The bare broadcaster keeps no history: what a churning session missed while
            // offline cannot be synced, which is noted, not failed.
            assert!(!r["notes"].as_array().unwrap().is_empty(), "{r}");
        }
        assert!(c["expected"].as_u64().unwrap() > 500, "{target}: {c}");
        assert_eq!(r["passed"], true);
        assert!(r["e2e_latency"]["count"].as_u64().unwrap() > 0);
        assert!(r["ack_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
        assert!(
            r["connections"]["reconnects"].as_u64().unwrap() > 0,
            "churn happened"
        );
        assert_eq!(r["connections"]["sessions"], 200);
        assert!(!r["timeline"].as_array().unwrap().is_empty());
        assert_plots(&dir);
    }
    // chatd's memory and CPU were sampled.
    let r = read_report(&out.path().join("chatd"));
    assert!(r["server"]["rss_peak_kib"].as_u64().unwrap() > 0);
}

#[test]
fn direct_messages_over_msgpack_against_a_testkit_node() {
    let node = testkit::Node::start_with(
        testkit::NodeOpts::default()
            .env("CHATD_LIMITS__SEND_PER_SEC", 10_000)
            .env("CHATD_LIMITS__SEND_BURST", 10_000),
    );
    let out = tempfile::tempdir().unwrap();
    let result = loadtest_against(
        &node,
        out.path(),
        &[
            "dm",
            "--users",
            "300",
            "--rate",
            "600",
            "--duration",
            "2",
            "--ramp-up",
            "1",
            "--codec",
            "msgpack",
            "--procs",
            "2",
        ],
    );
    succeeded(&result);
    let r = read_report(&out.path().join("chatd"));
    assert_eq!(r["completeness"]["lost"], 0);
    assert!(r["completeness"]["expected"].as_u64().unwrap() > 500);
    assert_eq!(r["client"]["procs"], 2);
    assert_eq!(r["server"]["pid"], node.child.id());
}

#[test]
fn two_fanout_runs_against_one_node_both_succeed() {
    // Group names are unique in the company: each run names its groups with its own tag, so
    // the second run does not fail with 409 (found while measuring a cluster).
    let node = testkit::Node::start();
    for run in 0..2 {
        let out = tempfile::tempdir().unwrap();
        let result = loadtest_against(
            &node,
            out.path(),
            &[
                "fanout",
                "--groups",
                "2",
                "--group-size",
                "5",
                "--rate",
                "5",
                "--duration",
                "1",
                "--ramp-up",
                "0.5",
            ],
        );
        succeeded(&result);
        let r = read_report(&out.path().join("chatd"));
        assert_eq!(r["completeness"]["lost"], 0, "run {run}");
    }
}

#[test]
fn a_small_mixed_day_against_a_spawned_node_is_complete() {
    let out = tempfile::tempdir().unwrap();
    let result = loadtest()
        .arg(scenario("mixed.toml"))
        .arg("--spawn-server")
        .arg(testkit::chatd_bin())
        .args([
            "--users",
            "200",
            "--groups",
            "20",
            "--group-size",
            "30",
            "--large-group-size",
            "120",
            "--rate",
            "40",
            "--dm-rate",
            "40",
            "--duration",
            "2",
            "--ramp-up",
            "1",
            "--no-progress",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    succeeded(&result);
    let r = read_report(&out.path().join("chatd"));
    assert_eq!(r["completeness"]["lost"], 0, "{}", r["completeness"]);
    assert!(r["completeness"]["expected"].as_u64().unwrap() > 100);
    // Several devices per user: more sessions than users.
    assert!(r["connections"]["sessions"].as_u64().unwrap() > 200);
}

#[test]
fn lost_and_duplicated_deliveries_are_caught() {
    // The bare broadcaster with fault injection: every 40th delivery dropped, every 30th
    // delivered twice. The run must fail (non-zero exit) and count both.
    let out = tempfile::tempdir().unwrap();
    let result = loadtest()
        .arg("fanout")
        .args([
            "--groups",
            "2",
            "--group-size",
            "20",
            "--rate",
            "20",
            "--duration",
            "2",
        ])
        .args([
            "--ramp-up",
            "0.5",
            "--drain",
            "2",
            "--no-progress",
            "--ceiling-only",
        ])
        .args([
            "--ceiling-args",
            "--drop-every 40 --duplicate-every 30",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(!result.status.success(), "a lossy run must fail:\n{stdout}");
    assert!(String::from_utf8_lossy(&result.stderr).contains("lost"));
    let r = read_report(&out.path().join("ceiling"));
    let c = &r["completeness"];
    let expected = c["expected"].as_u64().unwrap();
    let lost = c["lost"].as_u64().unwrap();
    assert!(expected > 1000, "{c}");
    // About one in 40 deliveries is dropped.
    assert!(lost > expected / 80 && lost < expected / 20, "{c}");
    assert!(c["duplicates"].as_u64().unwrap() > expected / 60, "{c}");
    assert_eq!(r["passed"], false);
    assert!(stdout.contains("FAIL"), "{stdout}");
}
