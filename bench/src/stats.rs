//! The figures of one measurement: latency percentiles, or throughput; and the
//! figures of several runs of one measurement, each the median of the runs'.

use serde::Serialize;

/// Latency figures of one measurement, in nanoseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyStats {
    pub samples: usize,
    pub median_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub mean_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
}

impl LatencyStats {
    /// The figures of `samples` (at least one), in nanoseconds.
    pub fn from_samples(mut samples: Vec<u64>) -> LatencyStats {
        samples.sort_unstable();
        let n = samples.len();
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
        LatencyStats {
            samples: n,
            median_ns: rank(0.5),
            p99_ns: rank(0.99),
            p999_ns: rank(0.999),
            mean_ns: samples.iter().sum::<u64>() as f64 / n as f64,
            min_ns: samples[0] as f64,
            max_ns: samples[n - 1] as f64,
        }
    }

    /// The figures of several runs of one measurement, each the median of the runs'
    /// (as [`Figures::median_of`]); `None` if there are none.
    pub fn median_of<'a>(runs: impl IntoIterator<Item = &'a LatencyStats>) -> Option<LatencyStats> {
        let figures: Vec<Figures> = runs.into_iter().map(|l| Figures::Latency(l.clone())).collect();
        match Figures::median_of(&figures.iter().collect::<Vec<_>>())? {
            Figures::Latency(l) => Some(l),
            Figures::Throughput(_) => None,
        }
    }
}

/// Throughput figures of one measurement: the median round, and the spread.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputStats {
    pub rounds: u32,
    pub msgs_per_round: u64,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    pub bytes_per_s_min: f64,
    pub bytes_per_s_max: f64,
}

impl ThroughputStats {
    /// The figures of timed rounds of `msgs_per_round` messages of `size` bytes, each
    /// round as messages per second (at least one round).
    pub fn from_rounds(mut rounds: Vec<f64>, msgs_per_round: u64, size: usize) -> ThroughputStats {
        rounds.sort_by(f64::total_cmp);
        let median = rounds[rounds.len() / 2];
        let bytes = size as f64;
        ThroughputStats {
            rounds: rounds.len() as u32,
            msgs_per_round,
            msgs_per_s: median,
            bytes_per_s: median * bytes,
            bytes_per_s_min: rounds[0] * bytes,
            bytes_per_s_max: rounds[rounds.len() - 1] * bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Figures {
    Latency(LatencyStats),
    Throughput(ThroughputStats),
}

impl Figures {
    /// The figures of several runs of one measurement: each the median of the runs'
    /// (for the throughput spread, the median of the runs' minima and of their maxima).
    /// `None` if there are no runs, or they are not all of one kind.
    pub fn median_of(runs: &[&Figures]) -> Option<Figures> {
        let median_by = |f: &dyn Fn(&Figures) -> Option<f64>| -> Option<f64> {
            median(runs.iter().map(|r| f(r)).collect::<Option<Vec<f64>>>()?)
        };
        match runs.first()? {
            Figures::Latency(first) => {
                let l = |f: fn(&LatencyStats) -> f64| {
                    median_by(&|r| match r {
                        Figures::Latency(l) => Some(f(l)),
                        Figures::Throughput(_) => None,
                    })
                };
                Some(Figures::Latency(LatencyStats {
                    samples: first.samples,
                    median_ns: l(|l| l.median_ns)?,
                    p99_ns: l(|l| l.p99_ns)?,
                    p999_ns: l(|l| l.p999_ns)?,
                    mean_ns: l(|l| l.mean_ns)?,
                    min_ns: l(|l| l.min_ns)?,
                    max_ns: l(|l| l.max_ns)?,
                }))
            }
            Figures::Throughput(first) => {
                let t = |f: fn(&ThroughputStats) -> f64| {
                    median_by(&|r| match r {
                        Figures::Throughput(t) => Some(f(t)),
                        Figures::Latency(_) => None,
                    })
                };
                Some(Figures::Throughput(ThroughputStats {
                    rounds: first.rounds,
                    msgs_per_round: first.msgs_per_round,
                    msgs_per_s: t(|t| t.msgs_per_s)?,
                    bytes_per_s: t(|t| t.bytes_per_s)?,
                    bytes_per_s_min: t(|t| t.bytes_per_s_min)?,
                    bytes_per_s_max: t(|t| t.bytes_per_s_max)?,
                }))
            }
        }
    }
}

/// The median of `values` (the mean of the middle two if their number is even), or
/// `None` if there are none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let stats = LatencyStats::from_samples((1..=1000).rev().collect());
        assert_eq!(stats.median_ns, 500.0);
        assert_eq!(stats.p99_ns, 990.0);
        assert_eq!(stats.p999_ns, 999.0);
        assert_eq!(stats.min_ns, 1.0);
        assert_eq!(stats.max_ns, 1000.0);
        let one = LatencyStats::from_samples(vec![7]);
        assert_eq!((one.median_ns, one.p999_ns), (7.0, 7.0));
    }

    #[test]
    fn throughput_is_the_median_round() {
        let stats = ThroughputStats::from_rounds(vec![3.0, 1.0, 2.0], 10, 64);
        assert_eq!((stats.rounds, stats.msgs_per_round, stats.msgs_per_s), (3, 10, 2.0));
        assert_eq!((stats.bytes_per_s, stats.bytes_per_s_min, stats.bytes_per_s_max), (128.0, 64.0, 192.0));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0]), Some(3.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn runs_aggregate_to_the_median_of_each_figure() {
        let latency = |median_ns, p99_ns, max_ns| {
            Figures::Latency(LatencyStats {
                samples: 100,
                median_ns,
                p99_ns,
                p999_ns: p99_ns * 2.0,
                mean_ns: median_ns,
                min_ns: 1.0,
                max_ns,
            })
        };
        let runs = [latency(40.0, 90.0, 500.0), latency(100.0, 200.0, 300.0), latency(75.0, 80.0, 900.0)];
        let Some(Figures::Latency(l)) = Figures::median_of(&runs.iter().collect::<Vec<_>>()) else { panic!() };
        assert_eq!((l.samples, l.median_ns, l.p99_ns, l.p999_ns, l.max_ns), (100, 75.0, 90.0, 180.0, 500.0));

        let runs = [
            Figures::Throughput(ThroughputStats::from_rounds(vec![1.0, 2.0, 3.0], 10, 64)),
            Figures::Throughput(ThroughputStats::from_rounds(vec![5.0, 6.0, 9.0], 10, 64)),
            Figures::Throughput(ThroughputStats::from_rounds(vec![0.5, 4.0, 5.0], 10, 64)),
        ];
        let Some(Figures::Throughput(t)) = Figures::median_of(&runs.iter().collect::<Vec<_>>()) else { panic!() };
        assert_eq!((t.rounds, t.msgs_per_round, t.msgs_per_s), (3, 10, 4.0));
        assert_eq!((t.bytes_per_s, t.bytes_per_s_min, t.bytes_per_s_max), (256.0, 64.0, 320.0));

        let mixed = [&runs[0], &latency(1.0, 1.0, 1.0)];
        assert!(Figures::median_of(&mixed).is_none());
        assert!(Figures::median_of(&[]).is_none());
    }
}
