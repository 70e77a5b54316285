//! Captures the versions of the compared crates (from this crate's own Cargo.lock) at
//! build time, for the report header. The toolchain and the shmport revision come
//! from shmport-bench's machine description.

fn main() {
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (krate, var) in [("iceoryx2", "CMP_ICEORYX2_VERSION"), ("ipc-channel", "CMP_IPC_CHANNEL_VERSION")] {
        let version = locked_version(&lock, krate).unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={var}={version}");
    }
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
}

/// The version of `krate` in a Cargo.lock (`[[package]]` tables: name, then version).
fn locked_version(lock: &str, krate: &str) -> Option<String> {
    let name_line = format!("name = \"{krate}\"");
    let mut lines = lock.lines();
    lines.find(|line| line.trim() == name_line)?;
    let version = lines.next()?.trim().strip_prefix("version = ")?;
    Some(version.trim_matches('"').to_string())
}
