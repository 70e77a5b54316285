//! Runs the real program, briefly: two processes per measurement, JSON and charts.

use std::process::Command;
use std::sync::Mutex;

/// Taken by the tests that run measurements or counts, so that they run one at a time
/// (the quick run pins busy-polling processes to both CPUs of a 2-core machine).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn quick_run_reports_every_measurement() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("shmport-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("results.json");
    let out = Command::new(env!("CARGO_BIN_EXE_shmport-bench"))
        .args(["--quick", "--only", "shmport,shmport-norevoke,unix,pipe,raw-ring,raw-slot", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for heading in [
        "## rtt:",
        "## stream:",
        "## rtt-sleep:",
        "## transfer: buffer transfer round trip",
        "## typed:",
        "## async:",
        "## async-sleep:",
        "## async-fanin:",
        "## fan-out:",
    ] {
        assert!(stdout.contains(heading), "{heading} missing:\n{stdout}");
    }
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    // shmport, unix, pipe, raw-ring × (5 rtt sizes + 3 stream sizes + 1 rtt-sleep size)
    // and raw-slot × 5 rtt sizes, then shmport, shmport-norevoke, unix, raw-ring × 4
    // transfer sizes (4 KiB to 64 MiB: --quick leaves out 1 GiB), then shmport, unix,
    // raw-ring, raw-slot × 3 typed sizes. shmport-norevoke runs the transfer workload
    // only, raw-slot (which takes turns) the round trips of rtt and typed only. Then
    // shmport and unix × 1 async size (64 B, both sides in tokio) and 1 async-sleep
    // size, then shmport and unix × 3 async-fanin port counts (1, 16, 256), then
    // shmport and unix × 2 fan-out sizes (64 B, 1 MiB) × 3 reader counts (1, 4, 16).
    assert_eq!(results.len(), 36 + 5 + 16 + 12 + 2 + 2 + 6 + 12);
    let asynced: Vec<_> = results.iter().filter(|r| r["workload"] == "async").collect();
    assert_eq!(asynced.len(), 2);
    let fanin: Vec<_> = results.iter().filter(|r| r["workload"] == "async-fanin").collect();
    assert_eq!(fanin.len(), 6);
    for r in &fanin {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["figures"]["throughput"]["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    for r in &asynced {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["figures"]["latency"]["median_ns"].as_f64().unwrap() > 0.0, "{r}");
    }
    for r in results {
        let status = r["status"].as_str().unwrap();
        assert!(status == "ok" || status.starts_with("n/a"), "{r}");
    }
    let transfer: Vec<_> = results.iter().filter(|r| r["workload"] == "transfer").collect();
    assert_eq!(transfer.len(), 16);
    for transport in ["shmport", "shmport-norevoke", "unix", "raw-ring"] {
        let sizes: Vec<u64> =
            transfer.iter().filter(|r| r["transport"] == transport).map(|r| r["size"].as_u64().unwrap()).collect();
        assert_eq!(sizes, [4 << 10, 64 << 10, 1 << 20, 64 << 20], "{transport}");
    }
    for r in transfer.iter().filter(|r| r["status"] == "ok") {
        let median = r["figures"]["latency"]["median_ns"].as_f64().unwrap();
        assert!(median > 0.0, "{r}");
    }
    assert!(results.iter().all(|r| r["transport"] != "shmport-norevoke" || r["workload"] == "transfer"));
    let slot: Vec<_> = results.iter().filter(|r| r["transport"] == "raw-slot").collect();
    assert_eq!(slot.len(), 5 + 3);
    assert!(slot.iter().all(|r| r["workload"] == "rtt" || r["workload"] == "typed"), "{slot:?}");
    // Every rtt and typed row has a ratio vs raw-slot, the other tables none.
    for (section, with_slot) in [("## rtt:", true), ("## stream:", false), ("## typed:", true)] {
        let table = stdout.split(section).nth(1).unwrap().split("\n## ").next().unwrap();
        assert_eq!(table.contains("| ratio vs raw-ring | ratio vs raw-slot |"), with_slot, "{section}\n{table}");
    }
    assert!(dir.join("rtt-latency.svg").exists());
    assert!(dir.join("stream-throughput.svg").exists());
    assert!(dir.join("transfer-latency.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without valgrind on PATH, `--instructions` fails and says how to install it.
#[test]
fn instructions_without_valgrind_say_how_to_get_it() {
    let empty = std::env::temp_dir().join(format!("shmport-bench-no-valgrind-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_shmport-bench")).arg("--instructions").env("PATH", &empty).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("apt-get install valgrind"), "{stderr}");
    let _ = std::fs::remove_dir_all(&empty);
}

/// With valgrind, `--instructions --quick` prints one count per operation (skipped
/// where valgrind is not installed).
#[test]
fn instructions_are_counted_where_valgrind_is() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("skipped: valgrind is not installed (apt-get install valgrind)");
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_shmport-bench")).args(["--instructions", "--quick"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for line in ["- CPU: ", "- rustc: ", "- revision: ", "--tool=callgrind"] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    for op in ["`post_bytes` + `recv_bytes_with`", "`post_typed` + `recv_typed`", "`post_message` + `recv`"] {
        let row = stdout.lines().find(|l| l.contains(op)).unwrap_or_else(|| panic!("{op} missing:\n{stdout}"));
        let count: f64 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        // Between a few dozen instructions and a hundred thousand: counted, not garbage.
        assert!((50.0..100_000.0).contains(&count), "{row}");
    }
}
