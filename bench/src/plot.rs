//! SVG charts of the results (`--plot DIR`).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use shmport_bench::job::{Connect, Workload};
use shmport_bench::report::{Measurement, fmt_size};
use shmport_bench::stats::Figures;

use crate::transport::Transport;

/// Writes `rtt-latency.svg`, `stream-throughput.svg` and `transfer-latency.svg` into
/// `dir` (each if its workload has results).
pub fn write_charts(dir: &Path, results: &[Measurement<Transport>]) -> Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let latency = series(results, Workload::Rtt, |f| match f {
        Figures::Latency(l) => Some(l.median_ns / 1000.0),
        Figures::Throughput(_) => None,
    });
    if !latency.1.is_empty() {
        let path = dir.join("rtt-latency.svg");
        chart(
            &path,
            "Round-trip latency (median) by message size",
            "message size",
            "median round trip (µs, log scale)",
            SeriesLabelPosition::UpperLeft,
            &latency,
        )?;
        written.push(path);
    }
    let throughput = series(results, Workload::Stream, |f| match f {
        Figures::Throughput(t) => Some(t.bytes_per_s / 1e9),
        Figures::Latency(_) => None,
    });
    if !throughput.1.is_empty() {
        let path = dir.join("stream-throughput.svg");
        chart(
            &path,
            "One-way throughput by message size",
            "message size",
            "GB/s (10^9 bytes/s, log scale)",
            SeriesLabelPosition::LowerRight,
            &throughput,
        )?;
        written.push(path);
    }
    let transfer = series(results, Workload::Transfer, |f| match f {
        Figures::Latency(l) => Some(l.median_ns / 1000.0),
        Figures::Throughput(_) => None,
    });
    if !transfer.1.is_empty() {
        let path = dir.join("transfer-latency.svg");
        chart(
            &path,
            "Buffer round trip (median): moved by shmport, copied by unix and raw-ring",
            "buffer size",
            "median round trip (µs, log scale)",
            SeriesLabelPosition::UpperLeft,
            &transfer,
        )?;
        written.push(path);
    }
    Ok(written)
}

type Series = (Transport, Vec<(usize, f64)>);

/// One fixed colour per transport, the same in every chart.
fn color(transport: Transport) -> RGBColor {
    match transport {
        Transport::Shmport => RGBColor(214, 39, 40),
        Transport::ShmportBusy => RGBColor(255, 127, 14),
        Transport::ShmportHalves => RGBColor(188, 189, 34),
        Transport::ShmportNorevoke => RGBColor(227, 119, 194),
        Transport::Unix => RGBColor(31, 119, 180),
        Transport::Pipe => RGBColor(44, 160, 44),
        Transport::Tcp => RGBColor(148, 103, 189),
        Transport::RawRing => RGBColor(40, 40, 40),
        Transport::RawSlot => RGBColor(140, 140, 140),
    }
}

/// The measured sizes of `workload`, and one series per transport of (size index, y).
fn series(
    results: &[Measurement<Transport>],
    workload: Workload,
    y: impl Fn(&Figures) -> Option<f64>,
) -> (Vec<usize>, Vec<Series>) {
    let mut sizes: Vec<usize> =
        results.iter().filter(|m| m.job.workload == workload && m.figures.is_some()).map(|m| m.job.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut out = Vec::new();
    for &transport in Transport::ALL {
        let points: Vec<(usize, f64)> = results
            .iter()
            .filter(|m| m.job.workload == workload && m.job.transport == transport)
            .filter_map(|m| {
                let value = y(m.figures.as_ref()?)?;
                let index = sizes.iter().position(|&s| s == m.job.size)?;
                (value > 0.0).then_some((index, value))
            })
            .collect();
        if !points.is_empty() {
            out.push((transport, points));
        }
    }
    (sizes, out)
}

fn chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    legend: SeriesLabelPosition,
    data: &(Vec<usize>, Vec<Series>),
) -> Result<()> {
    let (sizes, series) = data;
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let values = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, v)| v));
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo / 1.5, hi * 1.5);

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let last = sizes.len() as i32 - 1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((0..last).into_segmented(), (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                usize::try_from(*i).ok().and_then(|i| sizes.get(i)).map_or_else(String::new, |&s| fmt_size(s))
            }
            SegmentValue::Last => String::new(),
        })
        .y_label_formatter(&|v| format_axis(*v))
        .draw()
        .map_err(|e| err(&e))?;

    for &(transport, ref points) in series {
        let color = color(transport);
        let style = ShapeStyle::from(&color).stroke_width(2);
        let coords: Vec<_> = points.iter().map(|&(i, v)| (SegmentValue::CenterOf(i as i32), v)).collect();
        chart
            .draw_series(LineSeries::new(coords.clone(), style))
            .map_err(|e| err(&e))?
            .label(transport.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(coords.into_iter().map(|c| Circle::new(c, 3, color.filled()))).map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn format_axis(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    }
}
