//! What revocation costs the page tables alone, measured beside the `transfer` workload
//! so that shmport's revoking round trip is reported against it in the same run.
//!
//! Two references, each in fresh processes of this binary (hidden first arguments), on
//! a memfd mapped shared whose every page is written first, as the transfer workload's
//! buffer is (from 2 MiB on, at a 2 MiB-aligned address and advised `MADV_HUGEPAGE`,
//! as the arena lays out and advises its chunks of 2 MiB and up, so that where
//! `shmem_enabled` allows huge pages both get them):
//!
//! - **lone pair**: one single-threaded process, pinned where the parent runs, times
//!   `mprotect(PROT_NONE)` + `mprotect(PROT_READ | PROT_WRITE)` of the whole mapping.
//! - **ping-pong**: two single-threaded processes, pinned as the transfer workload's
//!   are, pass the buffer back and forth through a spin flag, each closing its view
//!   before it hands the buffer over and opening it when the buffer comes back, and
//!   writing and reading the first and the last byte as the workload does: the four
//!   `mprotect`s a revoking round trip cannot avoid, and nothing else.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use rustix::fs::MemfdFlags;
use rustix::io::{FdFlags, fcntl_setfd};
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use serde::Serialize;
use shmport_bench::machine::{self, Pinning};
use shmport_bench::stats::LatencyStats;

/// The hidden first argument of the lone-pair process: `__mprotect-lone SIZE WARMUP ITERS`.
pub const LONE_ARG: &str = "__mprotect-lone";
/// The hidden first argument of the ping-pong's timing side:
/// `__mprotect-pingpong SIZE WARMUP ITERS [PEER_CPU]`.
pub const PINGPONG_ARG: &str = "__mprotect-pingpong";
/// The hidden first argument of the ping-pong's other side: `__mprotect-peer SIZE ROUNDS`,
/// the flag's and the buffer's memfds named in [`FD_ENV`].
pub const PEER_ARG: &str = "__mprotect-peer";
const FD_ENV: &str = "SHMPORT_BENCH_MPROTECT_FD";
/// The flag's memfd is one page.
const PAGE: usize = 4096;
/// A PMD on x86-64: buffers of at least this size are mapped aligned to it and advised
/// `MADV_HUGEPAGE`, as the arena's chunks are.
const HUGE: usize = 2 << 20;

/// Both references at one size.
#[derive(Clone, Debug, Serialize)]
pub struct Reference {
    pub size: usize,
    pub lone_pair: LatencyStats,
    pub ping_pong: LatencyStats,
}

/// Measures both references at `size` (`warmup` untimed rounds, then `iters` timed),
/// each in processes of its own started from `exe`.
pub fn measure(exe: &std::path::Path, size: usize, warmup: u64, iters: u64, pinning: &Pinning) -> Result<Reference> {
    let counts = [size.to_string(), warmup.to_string(), iters.to_string()];
    let lone = run(Command::new(exe).arg(LONE_ARG).args(&counts)).context("the lone mprotect pair")?;
    let mut pingpong = Command::new(exe);
    pingpong.arg(PINGPONG_ARG).args(&counts);
    if let Some(cpu) = pinning.child_cpu() {
        pingpong.arg(cpu.to_string());
    }
    let ping_pong = run(&mut pingpong).context("the mprotect ping-pong")?;
    Ok(Reference { size, lone_pair: lone, ping_pong })
}

/// Runs a reference process and reads its figures (one line: median, p99, p99.9,
/// mean, min, max and the sample count).
fn run(cmd: &mut Command) -> Result<LatencyStats> {
    let out = cmd.stdin(Stdio::null()).stderr(Stdio::inherit()).output().context("running the reference")?;
    ensure!(out.status.success(), "the reference process failed ({})", out.status);
    let text = String::from_utf8(out.stdout)?;
    let v: Vec<f64> = text.split_whitespace().map(str::parse).collect::<Result<_, _>>().context("its output")?;
    let [median_ns, p99_ns, p999_ns, mean_ns, min_ns, max_ns, samples] = v[..] else {
        bail!("malformed reference output {text:?}");
    };
    Ok(LatencyStats { samples: samples as usize, median_ns, p99_ns, p999_ns, mean_ns, min_ns, max_ns })
}

fn print(stats: &LatencyStats) {
    let LatencyStats { samples, median_ns, p99_ns, p999_ns, mean_ns, min_ns, max_ns } = stats;
    println!("{median_ns} {p99_ns} {p999_ns} {mean_ns} {min_ns} {max_ns} {samples}");
}

/// The entry of the hidden arguments.
pub fn reference_main(arg: &str, args: &[String]) -> ExitCode {
    let result = match arg {
        LONE_ARG => lone(args),
        PINGPONG_ARG => ping_pong(args),
        _ => peer(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{arg}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn number<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T> {
    args.get(i).and_then(|a| a.parse().ok()).with_context(|| format!("missing or malformed {what}"))
}

/// A memfd of `size` bytes mapped shared (its own mapping: nothing beside it shares
/// the VMA), every page written, and a flag in a memfd of its own.
struct Mapping {
    fds: [OwnedFd; 2],
    flag: *mut u8,
    buffer: *mut u8,
    size: usize,
}

impl Mapping {
    fn create(size: usize) -> Result<Mapping> {
        let memfd = |name, len| -> Result<OwnedFd> {
            let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC)?;
            rustix::fs::ftruncate(&fd, len as u64)?;
            Ok(fd)
        };
        Mapping::map([memfd("shmport-bench-flag", PAGE)?, memfd("shmport-bench-mprotect", size)?], size)
    }

    fn map(fds: [OwnedFd; 2], size: usize) -> Result<Mapping> {
        ensure!(size > 0 && size.is_multiple_of(PAGE), "the size must be a whole number of pages");
        let map = |fd: &OwnedFd, len| -> Result<*mut u8> {
            // SAFETY: a new shared mapping of our own memfd, placed by the kernel; it
            // stays mapped until the process exits.
            let ptr = unsafe {
                rustix::mm::mmap(std::ptr::null_mut(), len, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED, fd, 0)
            }?;
            Ok(ptr.cast())
        };
        let (flag, buffer) =
            (map(&fds[0], PAGE)?, if size >= HUGE { map_huge(&fds[1], size)? } else { map(&fds[1], size)? });
        let mapping = Mapping { fds, flag, buffer, size };
        for k in (0..size).step_by(PAGE) {
            // SAFETY: inside the buffer, which is open.
            unsafe { mapping.buffer().add(k).write_volatile(1) };
        }
        Ok(mapping)
    }

    fn flag(&self) -> &AtomicU64 {
        // SAFETY: the flag's page, mapped for the process's life, only ever accessed as
        // this atomic.
        unsafe { &*self.flag.cast::<AtomicU64>() }
    }

    fn buffer(&self) -> *mut u8 {
        self.buffer
    }

    /// Opens or closes this process's view of the buffer.
    fn protect(&self, open: bool) -> Result<()> {
        let flags = if open { MprotectFlags::READ | MprotectFlags::WRITE } else { MprotectFlags::empty() };
        // SAFETY: the buffer, page-aligned, inside our mapping; no reference to it is
        // held across this call (it is only accessed through volatile pointer accesses).
        unsafe { rustix::mm::mprotect(self.buffer().cast(), self.size, flags) }.context("mprotect")
    }

    /// Writes `tag` into the first and last byte of the buffer (the view must be open).
    fn write_tag(&self, tag: u8) {
        // SAFETY: inside the open buffer.
        unsafe {
            self.buffer().write_volatile(tag);
            self.buffer().add(self.size - 1).write_volatile(tag);
        }
    }

    /// Whether the first and last byte of the buffer hold `tag` (the view must be open).
    fn has_tag(&self, tag: u8) -> bool {
        // SAFETY: inside the open buffer.
        unsafe { self.buffer().read_volatile() == tag && self.buffer().add(self.size - 1).read_volatile() == tag }
    }
}

/// Maps `size` bytes of `fd` shared at a 2 MiB-aligned address (the file offset, 0, is
/// aligned too) and advises `MADV_HUGEPAGE`, as the arena does for its chunks of 2 MiB
/// and up (the arena gets the address the kernel picks for shared memory, aligned
/// where shmem huge pages are enabled; here it is aligned by hand). The advice is
/// ignored if it fails, as the arena ignores it.
fn map_huge(fd: &OwnedFd, size: usize) -> Result<*mut u8> {
    // SAFETY: a new private reservation placed by the kernel, never accessed (no
    // protection); the part of it the memfd does not replace stays reserved until the
    // process exits.
    let reserve = unsafe {
        rustix::mm::mmap_anonymous(std::ptr::null_mut(), size + HUGE, ProtFlags::empty(), MapFlags::PRIVATE)
    }?;
    let aligned = (reserve as usize).next_multiple_of(HUGE) as *mut std::ffi::c_void;
    // SAFETY: `aligned..aligned + size` lies inside the reservation just made, which
    // nothing else uses; MAP_FIXED replaces that part of it with the memfd.
    let ptr = unsafe {
        rustix::mm::mmap(aligned, size, ProtFlags::READ | ProtFlags::WRITE, MapFlags::SHARED | MapFlags::FIXED, fd, 0)
    }?;
    // SAFETY: the mapping just made; the advice changes no contents.
    let _ = unsafe { rustix::mm::madvise(ptr, size, rustix::mm::Advice::LinuxHugepage) };
    Ok(ptr.cast())
}

fn lone(args: &[String]) -> Result<()> {
    let (size, warmup, iters): (usize, u64, u64) =
        (number(args, 0, "size")?, number(args, 1, "warmup")?, number(args, 2, "iterations")?);
    let mapping = Mapping::create(size)?;
    let mut samples = Vec::with_capacity(iters as usize);
    for i in 0..warmup + iters {
        let start = Instant::now();
        mapping.protect(false)?;
        mapping.protect(true)?;
        let elapsed = start.elapsed();
        if i >= warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    print(&LatencyStats::from_samples(samples));
    Ok(())
}

/// Waits until the flag holds `value`; fails if it does not within a minute (the other
/// side died).
fn wait_for(flag: &AtomicU64, value: u64) -> Result<()> {
    let mut start = None;
    let mut n = 0u32;
    // SYNC: mprotect ping-pong
    while flag.load(Ordering::Acquire) != value {
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 16) {
            let began = *start.get_or_insert_with(Instant::now);
            ensure!(began.elapsed().as_secs() < 60, "the other side did not answer within a minute");
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
    Ok(())
}

fn ping_pong(args: &[String]) -> Result<()> {
    let (size, warmup, iters): (usize, u64, u64) =
        (number(args, 0, "size")?, number(args, 1, "warmup")?, number(args, 2, "iterations")?);
    let peer_cpu: Option<usize> = args.get(3).map(|_| number(args, 3, "peer CPU")).transpose()?;
    let mapping = Mapping::create(size)?;
    let rounds = warmup + iters;
    let theirs = [mapping.fds[0].try_clone()?, mapping.fds[1].try_clone()?];
    let raw = format!("{},{}", theirs[0].as_raw_fd(), theirs[1].as_raw_fd());
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(PEER_ARG).arg(size.to_string()).arg(rounds.to_string()).env(FD_ENV, raw);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    // SAFETY: runs between fork and exec: fcntl and sched_setaffinity are plain syscalls
    // on a descriptor the closure owns and a set on the stack; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &theirs {
                fcntl_setfd(fd, FdFlags::empty())?;
            }
            if let Some(cpu) = peer_cpu {
                machine::pin(None, cpu)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("spawning the peer")?;
    drop(cmd);
    let outcome = (|| {
        let flag = mapping.flag();
        // The peer has written every page and closed its view.
        wait_for(flag, 1)?;
        let mut samples = Vec::with_capacity(iters as usize);
        for i in 1..=rounds {
            let tag = (2 * i) as u8;
            let start = Instant::now();
            mapping.write_tag(tag);
            mapping.protect(false)?;
            // SYNC: mprotect ping-pong
            flag.store(2 * i, Ordering::Release);
            wait_for(flag, 2 * i + 1)?;
            mapping.protect(true)?;
            let echoed = mapping.has_tag(tag.wrapping_add(1));
            let elapsed = start.elapsed();
            ensure!(echoed, "round {i}: the peer's tag is missing");
            if i > warmup {
                samples.push(elapsed.as_nanos() as u64);
            }
        }
        Ok(samples)
    })();
    let samples = match outcome {
        Ok(samples) => samples,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let status = child.wait()?;
    ensure!(status.success(), "the peer failed ({status})");
    print(&LatencyStats::from_samples(samples));
    Ok(())
}

fn peer(args: &[String]) -> Result<()> {
    let (size, rounds): (usize, u64) = (number(args, 0, "size")?, number(args, 1, "rounds")?);
    let names = std::env::var(FD_ENV).context("no memfds named")?;
    let take = |raw: &str| -> Result<OwnedFd> {
        let raw: i32 = raw.parse().context("malformed memfd number")?;
        ensure!(raw > 2, "memfd {raw} is a standard stream");
        // SAFETY: the timing side passed this descriptor to this process alone, for this.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        fcntl_setfd(&fd, FdFlags::CLOEXEC)?;
        Ok(fd)
    };
    let (flag, buffer) = names.split_once(',').context("malformed memfd names")?;
    let mapping = Mapping::map([take(flag)?, take(buffer)?], size)?;
    mapping.protect(false)?;
    let flag = mapping.flag();
    // SYNC: mprotect ping-pong
    flag.store(1, Ordering::Release);
    for i in 1..=rounds {
        wait_for(flag, 2 * i)?;
        mapping.protect(true)?;
        let tag = (2 * i) as u8;
        ensure!(mapping.has_tag(tag), "round {i}: the timing side's tag is missing");
        mapping.write_tag(tag.wrapping_add(1));
        mapping.protect(false)?;
        // SYNC: mprotect ping-pong
        flag.store(2 * i + 1, Ordering::Release);
    }
    Ok(())
}
