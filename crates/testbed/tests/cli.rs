//! The `skyloom-testbed` command line as a script uses it: `up --detach -o json`, fault
//! calls from another process, `status`, `down`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // test code: a failed expectation is a failed test

use std::process::Command;

fn testbed_cli(state: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skyloom-testbed"))
        .args(args)
        .env("XDG_STATE_HOME", state)
        .output()
        .expect("running skyloom-testbed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kubectl_get_nodes(kubeconfig: &str) -> bool {
    let kubectl = skyloom_testbed::binaries::bin_dir().join("kubectl");
    Command::new(kubectl)
        .args([
            "--kubeconfig",
            kubeconfig,
            "get",
            "nodes",
            "--request-timeout=2s",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn detached_testbed_is_driven_from_other_processes_and_goes_down() {
    let state = tempfile::tempdir().unwrap();
    let spec = state.path().join("tb.yaml");
    std::fs::write(
        &spec,
        "name: cli-check\nhub: false\nmembers:\n- name: alpha\n  region: local-1\n  nodes:\n  - {name: gpu, count: 1, cpu: '8', memory: 32Gi, gpu: 2}\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = testbed_cli(
        state.path(),
        &["up", "--detach", "-o", "json", "-f", spec.to_str().unwrap()],
    );
    assert!(ok, "up --detach failed: {stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("json status on stdout");
    assert_eq!(status["name"], "cli-check");
    let member = &status["members"][0];
    assert_eq!(member["name"], "alpha");
    let kubeconfig = member["kubeconfig"].as_str().unwrap().to_owned();
    let work_dir = status["workDir"].as_str().unwrap().to_owned();

    // A second `up` with the same name is refused while the first runs.
    let (ok, _, stderr) = testbed_cli(
        state.path(),
        &["up", "--detach", "-f", spec.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(stderr.contains("already running"), "{stderr}");

    assert!(kubectl_get_nodes(&kubeconfig));
    let (ok, _, stderr) = testbed_cli(state.path(), &["cut", "alpha", "--name", "cli-check"]);
    assert!(ok, "{stderr}");
    assert!(!kubectl_get_nodes(&kubeconfig), "a cut member answered");
    let (ok, stdout, _) = testbed_cli(state.path(), &["status", "--name", "cli-check"]);
    assert!(ok);
    assert!(stdout.contains("cut"), "{stdout}");
    let (ok, _, _) = testbed_cli(state.path(), &["restore", "alpha", "--name", "cli-check"]);
    assert!(ok);
    assert!(kubectl_get_nodes(&kubeconfig));
    let (ok, _, stderr) = testbed_cli(state.path(), &["cut", "nope", "--name", "cli-check"]);
    assert!(!ok);
    assert!(stderr.contains("no member named 'nope'"), "{stderr}");

    let (ok, _, stderr) = testbed_cli(state.path(), &["down", "--name", "cli-check"]);
    assert!(ok, "{stderr}");
    // The supervisor tears everything down before it removes its socket; the janitor then
    // removes the work directory.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::path::Path::new(&work_dir).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        !std::path::Path::new(&work_dir).exists(),
        "work dir left behind"
    );
    assert!(!kubectl_get_nodes(&kubeconfig));
    let (ok, _, stderr) = testbed_cli(state.path(), &["status", "--name", "cli-check"]);
    assert!(!ok);
    assert!(stderr.contains("no testbed answers"), "{stderr}");
}
