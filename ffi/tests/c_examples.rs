//! The C and C++ examples, compiled with the system's `cc`/`c++` against the static
//! library and run: C alone (`ping`, `frame_loop`, `rtt`), C++ (`cpp_ping`), a C child
//! of a Rust parent, a Rust child (`examples/rust_echo.rs`) of a C parent, and the C and
//! C++ examples under valgrind's memcheck.
//!
//! The library is built by the test itself (`cargo build -p shmport-ffi`, in the
//! profile and target directory of this test binary), so a fresh clone needs only
//! `cargo test --release -p shmport-ffi`. A missing compiler or valgrind is a skip,
//! printed as such.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use shmport::MessageChannel;

/// Says why a check is skipped (a tool missing); with `SHMPORT_REQUIRE_TOOLS` set (as
/// `.ci/run` sets it where it has installed them), a missing tool fails the test.
macro_rules! skip {
    ($($arg:tt)*) => {{
        let why = format!($($arg)*);
        assert!(std::env::var_os("SHMPORT_REQUIRE_TOOLS").is_none(), "SHMPORT_REQUIRE_TOOLS is set: {why}");
        println!("{why}");
    }};
}

/// `target/<profile>`: this test binary runs from `target/<profile>/deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

fn ffi_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds `libshmport_ffi.a` once per test run and returns its path.
fn static_lib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let profile = profile_dir();
        let target = profile.parent().expect("target dir");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "shmport-ffi", "--lib", "--example", "rust_echo"]).env("CARGO_TARGET_DIR", target);
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p shmport-ffi failed");
        let lib = profile.join("libshmport_ffi.a");
        assert!(lib.exists(), "{} was not built", lib.display());
        lib
    })
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// Compiles `examples/<source>` into `target/<profile>/ffi-examples/<name>`, once per
/// test run (tests run in parallel, and several run `ping`: none may run a binary
/// another is still writing); `None` (with the reason printed) when the compiler is
/// missing.
fn compile(source: &str) -> Option<PathBuf> {
    static BUILT: Mutex<Vec<(String, Option<PathBuf>)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, out)) = built.iter().find(|(s, _)| s == source) {
        return out.clone();
    }
    let out = compile_now(source);
    built.push((source.to_owned(), out.clone()));
    out
}

fn compile_now(source: &str) -> Option<PathBuf> {
    let cpp = source.ends_with(".cpp");
    let compiler = if cpp { "c++" } else { "cc" };
    if !have(compiler) {
        skip!("SKIP: no `{compiler}` on this machine to compile {source}");
        return None;
    }
    let lib = static_lib();
    let out_dir = profile_dir().join("ffi-examples");
    std::fs::create_dir_all(&out_dir).expect("create ffi-examples");
    let out = out_dir.join(Path::new(source).file_stem().expect("stem"));
    let mut cmd = Command::new(compiler);
    if cpp {
        cmd.arg("-std=c++17");
    }
    cmd.args(["-g", "-O2", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(ffi_dir().join("include"))
        .arg(ffi_dir().join("examples").join(source))
        .arg(lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&out);
    let status = cmd.status().expect("run the compiler");
    assert!(status.success(), "{compiler} {source} failed");
    Some(out)
}

/// Runs `cmd` to completion, killing it after a minute (a hung example fails the test
/// instead of hanging it).
fn run(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("wait");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn expect_success(out: &Output, line: &str) {
    assert!(out.status.success(), "exit status {:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(line), "stdout lacks {line:?}: {stdout}");
}

#[test]
fn c_ping_round_trips_with_a_c_child() {
    let Some(ping) = compile("ping.c") else { return };
    expect_success(&run(Command::new(ping)), "ping: 1000 round trips ok, and a 1048576-byte buffer there and back");
}

/// The shared library too: `ping` linked with `-lshmport_ffi` (rpath to the build's
/// directory), and the library exports nothing but the `shmport_` names.
#[test]
fn c_ping_against_the_shared_library() {
    if !have("cc") {
        skip!("SKIP: no `cc` on this machine");
        return;
    }
    let dir = static_lib().parent().expect("profile dir").to_path_buf();
    let out = dir.join("ffi-examples").join("ping_shared");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(ffi_dir().join("include"))
        .arg(ffi_dir().join("examples/ping.c"))
        .arg(format!("-L{}", dir.display()))
        .arg(format!("-Wl,-rpath,{}", dir.display()))
        .args(["-lshmport_ffi", "-o"])
        .arg(&out)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc ping.c -lshmport_ffi failed");
    expect_success(&run(Command::new(&out)), "ping: 1000 round trips ok");
    if have("nm") {
        let nm = Command::new("nm").args(["-D", "--defined-only"]).arg(dir.join("libshmport_ffi.so")).output().unwrap();
        let symbols = String::from_utf8_lossy(&nm.stdout);
        let names: Vec<&str> = symbols.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
        assert!(names.contains(&"shmport_channel_new"), "{names:?}");
        let stray: Vec<&&str> = names.iter().filter(|n| !n.starts_with("shmport_")).collect();
        assert!(stray.is_empty(), "libshmport_ffi.so exports more than the C API: {stray:?}");
    } else {
        skip!("SKIP (symbol check only): no `nm` on this machine");
    }
}

#[test]
fn c_frame_loop_polls_without_blocking() {
    let Some(frame_loop) = compile("frame_loop.c") else { return };
    let out = run(Command::new(frame_loop));
    expect_success(&out, "frame_loop: 300 frames");
}

#[test]
fn cpp_wrappers_round_trip_with_a_thread_and_a_forked_child() {
    let Some(cpp) = compile("cpp_ping.cpp") else { return };
    expect_success(&run(Command::new(cpp)), "cpp_ping: thread and child round trips ok");
}

#[test]
fn c_round_trip_timing_runs() {
    let Some(rtt) = compile("rtt.c") else { return };
    let mut cmd = Command::new(rtt);
    cmd.arg("2000");
    expect_success(&run(cmd), "rtt: 2000 round trips of 64 B from C: median ");
}

#[test]
fn rust_child_echoes_for_a_c_parent() {
    let Some(ping) = compile("ping.c") else { return };
    // Built by `cargo test` with the other examples of this crate.
    let echo = profile_dir().join("examples").join("rust_echo");
    assert!(echo.exists(), "{} is missing (cargo test builds it)", echo.display());
    let mut cmd = Command::new(ping);
    cmd.arg("--child").arg(&echo);
    let out = run(cmd);
    expect_success(&out, "ping: 1000 round trips ok, and a 1048576-byte buffer there and back");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rust_echo: 1001 messages"));
}

#[test]
fn c_child_echoes_for_a_rust_parent() {
    let Some(ping) = compile("ping.c") else { return };
    let channel = MessageChannel::new().expect("channel");
    let mut cmd = Command::new(ping);
    cmd.arg("echo").stdout(Stdio::piped()).stderr(Stdio::piped());
    channel.port2().transfer_to_child(&mut cmd).expect("transfer_to_child");
    let child = cmd.spawn().expect("spawn the C child");
    drop(cmd);
    let port = channel.port1();
    for i in 0..200u32 {
        let msg: Vec<u8> = (0..=(i % 500)).map(|j| (i + j) as u8).collect();
        port.post_bytes(&msg).expect("post");
        let back = port.recv_bytes_with(<[u8]>::to_vec).expect("echo");
        assert_eq!(back, msg, "round {i}");
    }
    // A buffer to the C child and back, changed in place there.
    let buffer = shmport::ArrayBuffer::from_slice(&[41u8; 100_000]).expect("buffer");
    port.post_bytes(b"buffer").expect("post");
    port.post_message(shmport::Value::ArrayBuffer(buffer.clone()), [buffer.clone().into()]).expect("transfer");
    assert!(buffer.is_detached());
    let shmport::Value::ArrayBuffer(back) = port.recv().expect("the buffer back").data else {
        panic!("the C child sent back something other than a buffer")
    };
    assert_eq!(back.to_vec(), vec![42u8; 100_000]);
    port.close();
    let out = child.wait_with_output().expect("wait for the C child");
    assert!(out.status.success(), "C child: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("echo: 200 messages"));
}

/// The C and C++ examples under memcheck, their children too (`--trace-children`):
/// no invalid access, no definite or indirect leak, in any of the processes.
#[test]
fn examples_under_valgrind_memcheck() {
    if !have("valgrind") {
        skip!("SKIP: valgrind is not installed (.ci/run installs it)");
        return;
    }
    for (source, line) in [
        ("ping.c", "ping: 1000 round trips ok, and a 1048576-byte buffer there and back"),
        ("frame_loop.c", "frame_loop: 300 frames"),
        ("cpp_ping.cpp", "cpp_ping: thread and child round trips ok"),
    ] {
        let Some(program) = compile(source) else { return };
        let mut cmd = Command::new("valgrind");
        cmd.args(["--error-exitcode=1", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect"])
            .arg("--trace-children=yes")
            .arg(program);
        let out = run(cmd);
        expect_success(&out, line);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let summaries = stderr.matches("ERROR SUMMARY: ").count();
        let clean = stderr.matches("ERROR SUMMARY: 0 errors").count();
        assert!(summaries >= 2 && clean == summaries, "memcheck found errors in {source} or its child");
    }
}
