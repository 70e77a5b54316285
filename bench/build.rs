//! Captures the toolchain and source revision at build time, for the report header.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BENCH_RUSTC_VERSION={rustc_version}");

    let revision = match run("git", &["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            // Only code counts: the result files this program writes (docs/) and the
            // prose around them do not change what is measured.
            let code = ["../src", "../benches", "../Cargo.toml", "../Cargo.lock", "."];
            let args: Vec<&str> = ["status", "--porcelain", "--"].into_iter().chain(code).collect();
            let dirty = run("git", &args).is_some_and(|s| !s.is_empty());
            if dirty { format!("{hash}-dirty") } else { hash }
        }
        None => "unknown (no git)".into(),
    };
    println!("cargo:rustc-env=BENCH_GIT_REVISION={revision}");

    // Re-run when the revision or the sources change (the dirty flag follows edits).
    // `--git-path` finds each file where git keeps it: in a linked worktree HEAD and the
    // index are the worktree's, the branch refs the main repository's. A path that does
    // not exist (a packed ref) would make cargo rebuild every time, so only existing
    // ones are named.
    let mut watch = vec!["HEAD".to_string(), "index".to_string(), "packed-refs".to_string()];
    if let Some(head_ref) = run("git", &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(head_ref);
    }
    for name in watch {
        if let Some(path) = run("git", &["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=../src");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
}

/// Runs a command and returns its trimmed stdout, or `None` if it is missing or fails.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
