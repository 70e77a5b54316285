//! Runs the real program, briefly: two processes per measurement, JSON and charts.

use std::process::Command;

#[test]
fn quick_run_reports_every_measurement() {
    let dir = std::env::temp_dir().join(format!("shmport-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_shmport-bench"))
        .args(["--quick", "--only", "shmport,unix,pipe,raw-ring", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for heading in ["## rtt:", "## stream:", "## rtt-sleep:"] {
        assert!(stdout.contains(heading), "{heading} missing:\n{stdout}");
    }
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    // 4 transports × (5 rtt sizes + 3 stream sizes + 1 rtt-sleep size).
    assert_eq!(results.len(), 36);
    for r in results {
        let status = r["status"].as_str().unwrap();
        assert!(status == "ok" || status.starts_with("n/a"), "{r}");
    }
    assert!(dir.join("rtt-latency.svg").exists());
    assert!(dir.join("stream-throughput.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
