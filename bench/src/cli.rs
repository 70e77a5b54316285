//! The command-line options every benchmark program takes.

use anyhow::{Context, Result, bail};

use crate::job::{Connect, Workload, by_name};

/// What to run, and how.
pub struct Options<T> {
    /// Tiny iteration counts: a smoke test.
    pub quick: bool,
    /// In report order, whatever the order asked.
    pub transports: Vec<T>,
    /// In report order, whatever the order asked.
    pub workloads: Vec<Workload>,
    /// Pin the two processes to two CPUs.
    pub pin: bool,
    /// Runs of every measurement (at least 1), interleaved: every measurement once,
    /// then every one again, and so on. Each reported figure is the median of the runs'.
    pub repeat: usize,
    /// Only the measurements of these message sizes (`--sizes`); all when `None`.
    pub sizes: Option<Vec<usize>>,
}

impl<T: Connect> Options<T> {
    /// Parses `--quick`, `--only`, `--workloads` (among `workloads`, the program's),
    /// `--repeat`, `--sizes`, `--no-pin` and `-h`/`--help` (prints `usage` and exits). Any other argument goes
    /// to `extra`, with a way to take its value; `extra` returns whether it knew it.
    pub fn parse(
        args: &[String],
        usage: &str,
        workloads: &[Workload],
        mut extra: impl FnMut(&str, &mut dyn FnMut() -> Result<String>) -> Result<bool>,
    ) -> Result<Options<T>> {
        let mut options = Options {
            quick: false,
            transports: T::ALL.to_vec(),
            workloads: workloads.to_vec(),
            pin: true,
            repeat: 1,
            sizes: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().cloned().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--no-pin" => options.pin = false,
                "--only" => options.transports = pick(T::ALL, T::name, "transport", &value()?)?,
                "--workloads" => options.workloads = pick(workloads, Workload::name, "workload", &value()?)?,
                "--repeat" => options.repeat = repeat(&value()?)?,
                "--sizes" => options.sizes = Some(sizes(&value()?)?),
                "-h" | "--help" => {
                    print!("{usage}");
                    std::process::exit(0);
                }
                other => {
                    if !extra(other, &mut value)? {
                        bail!("unknown argument {other:?}\n\n{usage}");
                    }
                }
            }
        }
        Ok(options)
    }

    /// The run's mode, for the report.
    pub fn mode(&self) -> &'static str {
        if self.quick { "quick (smoke test: figures are not meaningful)" } else { "full" }
    }
}

/// The value of `--repeat`: a count of runs, at least 1.
fn repeat(value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("--repeat needs a number of runs, at least 1 (got {value:?})"),
    }
}

impl<T> Options<T> {
    /// Whether the measurements of messages of `size` bytes were asked for (`--sizes`).
    pub fn wants_size(&self, size: usize) -> bool {
        self.sizes.as_ref().is_none_or(|sizes| sizes.contains(&size))
    }
}

/// The value of `--sizes`: comma-separated byte counts, each a number with an
/// optional binary suffix (`4K`, `1M`, `1G`: KiB, MiB, GiB).
fn sizes(value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .map(|item| {
            let (digits, unit) = match item.as_bytes().last() {
                Some(b'K' | b'k') => (&item[..item.len() - 1], 1 << 10),
                Some(b'M' | b'm') => (&item[..item.len() - 1], 1 << 20),
                Some(b'G' | b'g') => (&item[..item.len() - 1], 1 << 30),
                _ => (item, 1),
            };
            match digits.parse::<usize>().ok().and_then(|n| n.checked_mul(unit)) {
                Some(n) if n > 0 => Ok(n),
                _ => bail!("--sizes needs byte counts such as 4096, 64K or 1M (got {item:?})"),
            }
        })
        .collect()
}

/// The ones of `all` named in the comma-separated `asked`, in the order of `all`.
fn pick<X: Copy + PartialEq>(
    all: &[X],
    name_of: impl Fn(X) -> &'static str + Copy,
    what: &str,
    asked: &str,
) -> Result<Vec<X>> {
    let asked: Vec<X> = asked.split(',').map(|name| by_name(all, name_of, what, name)).collect::<Result<_>>()?;
    Ok(all.iter().copied().filter(|x| asked.contains(x)).collect())
}

#[cfg(test)]
mod tests {
    use super::{repeat, sizes};

    #[test]
    fn repeat_is_a_positive_count() {
        assert_eq!(repeat("1").unwrap(), 1);
        assert_eq!(repeat("5").unwrap(), 5);
        for bad in ["0", "-1", "x", "", "2.5"] {
            assert!(repeat(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(sizes("4096,64K,1M,1g").unwrap(), [4096, 64 << 10, 1 << 20, 1 << 30]);
        for bad in ["", "0", "1T", "K", "-1", "1M,"] {
            assert!(sizes(bad).is_err(), "{bad:?}");
        }
    }
}
