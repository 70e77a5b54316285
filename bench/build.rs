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
    if let Some(git_dir) = run("git", &["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
        if let Some(head_ref) = run("git", &["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{head_ref}");
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
