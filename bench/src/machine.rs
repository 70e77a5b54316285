//! What the figures were measured on, and CPU pinning.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustix::process::Pid;
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct MachineInfo {
    pub cpu_model: String,
    /// Logical CPUs this process may run on.
    pub cpus: usize,
    pub virtualized: bool,
    pub kernel: String,
    pub clocksource: String,
    /// `/sys/kernel/mm/transparent_hugepage/shmem_enabled` (the chosen policy in
    /// brackets): whether the arena's 2 MiB chunks, advised `MADV_HUGEPAGE`, can get
    /// huge pages.
    pub shmem_thp: String,
    /// Cost of one `Instant::now()`, measured at start-up.
    pub timer_overhead_ns: f64,
    pub rustc: String,
    pub git_revision: String,
    /// UTC, ISO 8601.
    pub date: String,
    pub pinning: String,
}

impl MachineInfo {
    pub fn collect(pinning: &Pinning) -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
        };
        let cpu_model = field("model name").unwrap_or_else(|| "unknown".into());
        let virtualized = field("flags").is_some_and(|f| f.split(' ').any(|x| x == "hypervisor"));
        let read = |path: &str| {
            std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
        };
        MachineInfo {
            cpu_model,
            cpus: pinning.allowed.len(),
            virtualized,
            kernel: read("/proc/sys/kernel/osrelease"),
            clocksource: read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
            shmem_thp: read("/sys/kernel/mm/transparent_hugepage/shmem_enabled"),
            timer_overhead_ns: timer_overhead_ns(),
            rustc: env!("BENCH_RUSTC_VERSION").to_string(),
            git_revision: env!("BENCH_GIT_REVISION").to_string(),
            date: utc_now(),
            pinning: pinning.describe(),
        }
    }
}

/// What the first [`Pinning::setup`] decided: whether it was asked to pin, and what it found.
static FIRST: std::sync::OnceLock<(bool, Pinning)> = std::sync::OnceLock::new();

/// Which CPUs the two processes run on.
#[derive(Clone, Debug)]
pub struct Pinning {
    /// CPUs this process was allowed at start.
    pub allowed: Vec<usize>,
    /// (parent CPU, child CPU) when pinned.
    pub cpus: Option<(usize, usize)>,
    /// Why not, when not.
    pub failure: Option<String>,
}

impl Pinning {
    /// Pins this process to the first allowed CPU, and picks the second for children.
    /// Decided once: a later call returns what the first found (this process is then
    /// allowed its own CPU only, so looking again would find no CPU for children), and
    /// must ask the same (it panics if `enabled` differs from the first call's).
    pub fn setup(enabled: bool) -> Pinning {
        let (first, pinning) = FIRST.get_or_init(|| (enabled, Pinning::first_setup(enabled)));
        assert_eq!(*first, enabled, "Pinning::setup asked to pin {enabled} after {first}: it decides once");
        pinning.clone()
    }

    /// What [`setup`](Self::setup) decided, if it was called.
    pub fn decided() -> Option<Pinning> {
        FIRST.get().map(|(_, pinning)| pinning.clone())
    }

    fn first_setup(enabled: bool) -> Pinning {
        let allowed = allowed_cpus()
            .unwrap_or_else(|_| (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect());
        let mut pinning = Pinning { allowed: allowed.clone(), cpus: None, failure: None };
        if !enabled {
            pinning.failure = Some("disabled (--no-pin)".into());
        } else if allowed.len() < 2 {
            pinning.failure = Some(format!("only {} CPU available", allowed.len()));
        } else {
            let (parent, child) = (allowed[0], allowed[1]);
            match pin(None, parent) {
                Ok(()) => pinning.cpus = Some((parent, child)),
                Err(e) => pinning.failure = Some(format!("sched_setaffinity failed: {e:#}")),
            }
        }
        pinning
    }

    pub fn child_cpu(&self) -> Option<usize> {
        self.cpus.map(|(_, child)| child)
    }

    pub fn describe(&self) -> String {
        match (&self.cpus, &self.failure) {
            (Some((p, c)), _) => format!("yes (parent on CPU {p}, child on CPU {c})"),
            (None, Some(why)) => format!("no: {why}"),
            (None, None) => "no".into(),
        }
    }
}

fn allowed_cpus() -> Result<Vec<usize>> {
    let set = sched_getaffinity(None).context("sched_getaffinity")?;
    Ok((0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect())
}

/// Pins `pid` (this process for `None`) to `cpu`. Allocation-free, so it may run
/// between fork and exec.
pub fn pin(pid: Option<Pid>, cpu: usize) -> rustix::io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(pid, &set)
}

/// Checks that `pid` runs on `cpu` alone.
pub fn check_pinned(pid: Pid, cpu: usize) -> Result<()> {
    let set = sched_getaffinity(Some(pid)).context("sched_getaffinity of the child")?;
    if set.count() != 1 || !set.is_set(cpu) {
        bail!("the child is not pinned to CPU {cpu}");
    }
    Ok(())
}

fn timer_overhead_ns() -> f64 {
    const N: u32 = 200_000;
    let start = Instant::now();
    let mut last = start;
    for _ in 0..N {
        last = std::hint::black_box(Instant::now());
    }
    (last - start).as_nanos() as f64 / f64::from(N)
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    iso8601(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn iso8601(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::{Pinning, iso8601};

    #[test]
    fn pinning_is_decided_once_and_must_be_asked_alike() {
        // Not pinned, so the test process keeps its CPUs.
        let first = Pinning::setup(false);
        assert_eq!(Pinning::setup(false).describe(), first.describe());
        let other = std::panic::catch_unwind(|| Pinning::setup(true));
        assert!(other.is_err(), "a second call asking otherwise is refused, not ignored");
    }

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
