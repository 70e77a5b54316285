//! `--instructions`: the instructions one operation executes, counted by callgrind.
//!
//! Each operation is a loop in one process on a default channel, both ends in the
//! same thread (post, then receive). The parent re-executes this binary under
//! `valgrind --tool=callgrind` with the hidden argument `__icount <op> <n>`, which runs
//! only the loop, `n` times, and reads the total valgrind prints on stderr
//! ("Collected : I"). It runs each loop `N` and `2N` times, in two processes, and
//! reports (I(2N) − I(N)) / N: start-up, the channel's setup and the exit cancel out.

use std::path::Path;
use std::process::{Command, ExitCode, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use shmport::MessageChannel;
use shmport_bench::machine::{MachineInfo, Pinning};

/// The hidden first argument that makes the binary run one loop.
pub const LOOP_ARG: &str = "__icount";

/// Loop iterations N (the second process runs 2N): enough that the difference is
/// stable to well under 1%, and that the six runs under callgrind take seconds.
const N: u64 = 100_000;
/// N with `--quick`: a smoke test, still within a few instructions.
const N_QUICK: u64 = 10_000;

const USAGE: &str = "\
usage: shmport-bench --instructions [--quick]

Counts, with valgrind's callgrind, the instructions of one operation on a default
channel, both ends in one thread: a 64 B post_bytes + recv_bytes_with (on ports, on
exclusive halves, with a write chunk filled in place, through the C API, and async in tokio), a post_typed +
recv_typed of a struct holding 64 bytes, and a post_message + recv of a 63-byte
string. Each loop runs N and 2N times (two processes); the figure is
(I(2N) - I(N)) / N. N is 100000, or 10000 with --quick. Needs valgrind on PATH.
";

/// The measured operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Bytes,
    Halves,
    Chunk,
    Typed,
    Value,
    CApi,
    Async,
    Transfer,
}

impl Op {
    const ALL: [Op; 8] = [Op::Bytes, Op::Halves, Op::Chunk, Op::CApi, Op::Async, Op::Typed, Op::Value, Op::Transfer];

    fn name(self) -> &'static str {
        match self {
            Op::Bytes => "bytes",
            Op::Halves => "halves",
            Op::Chunk => "chunk",
            Op::Typed => "typed",
            Op::Value => "value",
            Op::CApi => "c-api",
            Op::Async => "async",
            Op::Transfer => "transfer",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Op::Bytes => "64 B `post_bytes` + `recv_bytes_with`",
            Op::Halves => "64 B `PortWriter::post_bytes` + `PortReader::recv_bytes_with` (exclusive halves)",
            Op::Chunk => "64 B `PortWriter::write_chunk` filled + `commit` + `PortReader::recv_bytes_with`",
            Op::Typed => "`post_typed` + `recv_typed` of `{ id: u64, data: Vec<u8> }`, 64 B of data",
            Op::Value => "`post_message` + `recv` of a 63-byte string",
            Op::Async => "64 B `post_bytes_async` + `recv_bytes_with_async`, in a tokio current-thread runtime",
            Op::Transfer => {
                "a 4 KiB `ArrayBuffer` moved there and back (`post_message` with it in the transfer list + `recv`, twice), revocation off"
            }
            Op::CApi => {
                "64 B `shmport_port_post_bytes` + `shmport_port_recv_bytes` (the C API, through its `extern \"C\"` symbols)"
            }
        }
    }
}

/// The typed operation's struct.
#[derive(Serialize, Deserialize)]
struct Frame {
    id: u64,
    data: Vec<u8>,
}

/// The string the value operation posts (63 bytes).
const TEXT: &str = "a string of some sixty-four bytes, give or take a few of them..";

/// The hidden mode: `__icount <op> <n>` runs `op` `n` times and exits.
pub fn loop_main(args: &[String]) -> ExitCode {
    match run_loop(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmport-bench {LOOP_ARG}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_loop(args: &[String]) -> Result<()> {
    let [op, n] = args else { bail!("usage: {LOOP_ARG} <op> <n>") };
    let op = *Op::ALL.iter().find(|o| o.name() == op).with_context(|| format!("unknown operation {op:?}"))?;
    let n: u64 = n.parse().context("loop count")?;
    let channel = MessageChannel::new().context("creating the channel")?;
    let (a, b) = (channel.port1(), channel.port2());
    let msg = [7u8; 64];
    let mut sum = 0usize;
    if matches!(op, Op::Halves | Op::Chunk) {
        return run_halves_loop(&a, &b, op == Op::Chunk, n);
    }
    if op == Op::CApi {
        return run_c_api_loop(n);
    }
    if op == Op::Async {
        return run_async_loop(&a, &b, n);
    }
    if op == Op::Transfer {
        return run_transfer_loop(n);
    }
    for i in 0..n {
        match op {
            Op::Bytes => {
                a.post_bytes(&msg)?;
                sum += b.recv_bytes_with(|x| x.len())?;
            }
            Op::Typed => {
                a.post_typed(&Frame { id: i, data: msg.to_vec() })?;
                sum += b.recv_typed::<Frame>()?.data.len();
            }
            Op::Halves | Op::Chunk | Op::CApi | Op::Async | Op::Transfer => {}
            Op::Value => {
                a.post_message(TEXT, [])?;
                let _ = b.recv()?;
                sum += 1;
            }
        }
    }
    // Used, so that nothing of the loop is optimized away.
    println!("{sum}");
    Ok(())
}

/// The loop of `transfer`: one 4 KiB buffer moved from port1 to port2 and back, on a
/// channel that does not revoke the sender's pages (the fixed cost of a transfer).
fn run_transfer_loop(n: u64) -> Result<()> {
    use shmport::{ArrayBuffer, ChannelOptions, Value};
    let channel = MessageChannel::with_options(&ChannelOptions::new().revoke_transferred_pages(false))
        .context("creating the channel")?;
    let (a, b) = (channel.port1(), channel.port2());
    let mut buf = ArrayBuffer::new(4096).context("a buffer")?;
    let mut sum = 0usize;
    for _ in 0..n {
        for (from, to) in [(&a, &b), (&b, &a)] {
            from.post_message(Value::ArrayBuffer(buf.clone()), [buf.clone().into()])?;
            match to.recv()?.data {
                Value::ArrayBuffer(moved) => buf = moved,
                other => bail!("expected a buffer, got {other:?}"),
            }
        }
        sum += buf.byte_length();
    }
    println!("{sum}");
    Ok(())
}

/// The loop of `halves` and `chunk`: port1 split for its writer, port2 for its reader.
fn run_halves_loop(a: &shmport::MessagePort, b: &shmport::MessagePort, in_place: bool, n: u64) -> Result<()> {
    let (mut writer, _) = a.split().context("splitting port1")?;
    let (_, mut reader) = b.split().context("splitting port2")?;
    let msg = [7u8; 64];
    let mut sum = 0usize;
    for _ in 0..n {
        if in_place {
            let mut chunk = writer.write_chunk(msg.len())?;
            chunk.copy_from_slice(&msg);
            chunk.commit();
        } else {
            writer.post_bytes(&msg)?;
        }
        sum += reader.recv_bytes_with(|x| x.len())?;
    }
    // Used, so that nothing of the loop is optimized away.
    println!("{sum}");
    Ok(())
}

/// The loop of `async`: the two calls awaited in turn in one task (each finds what it
/// needs at once: the message posted, room in the ring), as a busy channel does.
fn run_async_loop(a: &shmport::MessagePort, b: &shmport::MessagePort, n: u64) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().context("tokio runtime")?;
    let msg = [7u8; 64];
    let sum = rt.block_on(async {
        let mut sum = 0usize;
        for _ in 0..n {
            a.post_bytes_async(&msg).await?;
            sum += b.recv_bytes_with_async(|x| x.len()).await?;
        }
        anyhow::Ok(sum)
    })?;
    println!("{sum}");
    Ok(())
}

/// The loop of `c-api`: a channel made and used through the C API's functions, as
/// `ffi/examples/post_recv_loop.c` does (a receive waiting for ever, into 64 bytes).
fn run_c_api_loop(n: u64) -> Result<()> {
    use shmport_ffi::*;
    let (mut a, mut b) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: two writable out-pointers.
    ensure!(unsafe { shmport_channel_new(&mut a, &mut b) } == SHMPORT_OK, "shmport_channel_new failed");
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut sum = 0usize;
    for _ in 0..n {
        let mut len = 0usize;
        // SAFETY: live handles from `shmport_channel_new`; `msg` readable and `back`
        // writable for 64 bytes; `len` writable.
        unsafe {
            ensure!(shmport_port_post_bytes(a, msg.as_ptr().cast(), msg.len()) == SHMPORT_OK, "post failed");
            let got = shmport_port_recv_bytes(b, back.as_mut_ptr().cast(), back.len(), &mut len, -1);
            ensure!(got == SHMPORT_OK, "receive failed: {got}");
        }
        sum += len;
    }
    // SAFETY: each handle freed once, not used after.
    unsafe {
        shmport_port_free(a);
        shmport_port_free(b);
    }
    println!("{sum}");
    Ok(())
}

/// `shmport-bench --instructions [--quick]`: counts and prints; `Ok(false)` if a
/// count failed.
pub fn main(args: &[String]) -> Result<bool> {
    let mut n = N;
    for arg in args {
        match arg.as_str() {
            "--instructions" => {}
            "--quick" => n = N_QUICK,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(true);
            }
            other => bail!("unknown argument {other:?} with --instructions\n\n{USAGE}"),
        }
    }
    let valgrind = match Command::new("valgrind").arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => bail!("`valgrind --version` failed ({})", out.status),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "--instructions counts with valgrind (callgrind), which is not on PATH; install it \
             (Debian/Ubuntu: apt-get install valgrind) and run again"
        ),
        Err(e) => return Err(e).context("running valgrind --version"),
    };
    let exe = std::env::current_exe().context("locating this executable")?;
    let machine = MachineInfo::collect(&Pinning::setup(false));
    println!("{}", header(&machine, &valgrind, n));
    println!("| operation | instructions per operation | I(N) | I(2N) |");
    println!("|---|---:|---:|---:|");
    let mut ok = true;
    for op in Op::ALL {
        match count(&exe, op, n) {
            Ok((once, twice)) => {
                let per = per_op(once, twice, n)?;
                println!("| {} | {per:.0} | {once} | {twice} |", op.describe());
            }
            Err(e) => {
                println!("| {} | FAILED | | |", op.describe());
                eprintln!("FAILED: {}: {e:#}", op.name());
                ok = false;
            }
        }
    }
    println!();
    println!(
        "I(k): instructions callgrind counted (Ir, user space) in a process that runs the loop k times; \
         instructions per operation = (I(2N) - I(N)) / N, which cancels start-up, the channel's setup and the exit."
    );
    Ok(ok)
}

/// The report's header: what counted, on what, at which commit.
fn header(machine: &MachineInfo, valgrind: &str, n: u64) -> String {
    format!(
        "# shmport-bench --instructions\n\n\
         - CPU: {} ({} CPUs{})\n\
         - kernel: {}\n\
         - rustc: {}\n\
         - revision: {}\n\
         - date: {}\n\
         - counted by: {valgrind} --tool=callgrind\n\
         - loops: N = {n} and 2N = {}, one process each; a default channel, both ends in one thread (post, then receive)\n",
        machine.cpu_model,
        machine.cpus,
        if machine.virtualized { ", virtualized" } else { "" },
        machine.kernel,
        machine.rustc,
        machine.git_revision,
        machine.date,
        2 * n,
    )
}

/// (I(N), I(2N)) for `op`: the two processes run side by side.
fn count(exe: &Path, op: Op, n: u64) -> Result<(u64, u64)> {
    let spawn = |k: u64| {
        Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(exe)
            .args([LOOP_ARG, op.name(), &k.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning valgrind")
    };
    let (once, twice) = (spawn(n)?, spawn(2 * n)?);
    let collected = |child: std::process::Child, k: u64| -> Result<u64> {
        let out = child.wait_with_output().context("waiting for valgrind")?;
        collected(&out).with_context(|| format!("the loop of {k} under callgrind"))
    };
    let once = collected(once, n)?;
    let twice = collected(twice, 2 * n)?;
    Ok((once, twice))
}

/// The total valgrind printed on the stderr of a successful run.
fn collected(out: &Output) -> Result<u64> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "failed ({}):\n{stderr}", out.status);
    parse_collected(&stderr).with_context(|| format!("no \"Collected : N\" line in valgrind's output:\n{stderr}"))
}

/// The count of callgrind's "==pid== Collected : 123456" line.
fn parse_collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let rest = line.split_once("Collected :")?.1;
        rest.trim().replace(',', "").parse().ok()
    })
}

/// (I(2N) − I(N)) / N.
fn per_op(once: u64, twice: u64, n: u64) -> Result<f64> {
    ensure!(twice > once, "the loop of 2N counted {twice} instructions, not more than N's {once}");
    Ok((twice - once) as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrinds_total() {
        let stderr = "==4242== Callgrind, a call-graph generating cache profiler\n\
                      ==4242== For interactive control, run 'callgrind_control -h'.\n\
                      ==4242== \n==4242== Events    : Ir\n==4242== Collected : 123456789\n\
                      ==4242== \n==4242== I   refs:      123,456,789\n";
        assert_eq!(parse_collected(stderr), Some(123_456_789));
        assert_eq!(parse_collected("==1== Collected : 1,234\n"), Some(1234));
        assert_eq!(parse_collected("==1== I   refs: 5\n"), None);
    }

    #[test]
    fn the_difference_cancels_setup() {
        assert_eq!(per_op(1_000_000 + 585 * 10, 1_000_000 + 585 * 20, 10).unwrap(), 585.0);
        assert!(per_op(10, 10, 1).is_err());
    }

    /// The loops run outside valgrind too (what callgrind counts is this code).
    #[test]
    fn the_loops_run() {
        for op in Op::ALL {
            run_loop(&[op.name().to_string(), "3".to_string()]).unwrap();
        }
        assert!(run_loop(&["carrier-pigeon".to_string(), "3".to_string()]).is_err());
        assert_eq!(TEXT.len(), 63);
    }
}
