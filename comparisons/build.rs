//! Captures the toolchain, the shmport revision and the versions of the compared
//! crates (from this crate's own Cargo.lock) at build time, for the report header.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CMP_RUSTC_VERSION={rustc_version}");

    // The shmport repository is the parent directory.
    let revision = match run("git", &["-C", "..", "rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty = run("git", &["-C", "..", "status", "--porcelain", "--", "src"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{hash}-dirty") } else { hash }
        }
        None => "unknown (no git)".into(),
    };
    println!("cargo:rustc-env=CMP_SHMPORT_REVISION={revision}");

    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (krate, var) in [("iceoryx2", "CMP_ICEORYX2_VERSION"), ("ipc-channel", "CMP_IPC_CHANNEL_VERSION")] {
        let version = locked_version(&lock, krate).unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={var}={version}");
    }

    if let Some(git_dir) = run("git", &["-C", "..", "rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
        if let Some(head_ref) = run("git", &["-C", "..", "symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{head_ref}");
        }
    }
    println!("cargo:rerun-if-changed=../src");
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC");
}

/// The version of `krate` in a Cargo.lock (`[[package]]` tables: name, then version).
fn locked_version(lock: &str, krate: &str) -> Option<String> {
    let name_line = format!("name = \"{krate}\"");
    let mut lines = lock.lines();
    lines.find(|line| line.trim() == name_line)?;
    let version = lines.next()?.trim().strip_prefix("version = ")?;
    Some(version.trim_matches('"').to_string())
}

/// Runs a command and returns its trimmed stdout, or `None` if it is missing or fails.
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
