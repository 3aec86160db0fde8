//! SVG plots of a report (plotters, SVG backend only, no font or system dependencies):
//! latency over time, the latency histogram, and throughput over time.

use crate::report::Report;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// A plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plotting {file}: {reason}")]
pub struct PlotError {
    file: String,
    reason: String,
}

const SIZE: (u32, u32) = (960, 480);

fn err(file: &Path) -> impl Fn(&dyn std::fmt::Display) -> PlotError + '_ {
    move |e| PlotError {
        file: file.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes the three plots into `dir`; returns their paths.
pub fn write_all(r: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let a = dir.join("latency_over_time.svg");
    latency_over_time(r, &a)?;
    let b = dir.join("latency_histogram.svg");
    latency_histogram(r, &b)?;
    let c = dir.join("throughput.svg");
    throughput(r, &c)?;
    Ok(vec![a, b, c])
}

fn legend(p: &'static RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], p)
}

/// p50, p99 and max send-to-delivery latency per second.
pub fn latency_over_time(r: &Report, file: &Path) -> Result<(), PlotError> {
    let e = err(file);
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let tmax = r.timeline.len().max(1) as f64;
    let ymax = r
        .timeline
        .iter()
        .map(|s| s.p99_ms)
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} on {}: send-to-delivery latency per second",
                r.scenario.name, r.target
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..tmax, 0f64..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("ms")
        .draw()
        .map_err(|x| e(&x))?;
    let active = || r.timeline.iter().filter(|s| s.delivered > 0);
    chart
        .draw_series(LineSeries::new(
            active().map(|s| (s.t as f64, s.p50_ms)),
            &BLUE,
        ))
        .map_err(|x| e(&x))?
        .label("p50")
        .legend(legend(&BLUE));
    chart
        .draw_series(LineSeries::new(
            active().map(|s| (s.t as f64, s.p99_ms)),
            &RED,
        ))
        .map_err(|x| e(&x))?
        .label("p99")
        .legend(legend(&RED));
    chart
        .draw_series(LineSeries::new(
            active().map(|s| (s.t as f64, s.max_ms.min(ymax))),
            &BLACK.mix(0.4),
        ))
        .map_err(|x| e(&x))?
        .label("max (clipped)")
        .legend(legend(&BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Send-to-delivery latency histogram in power-of-two buckets.
pub fn latency_histogram(r: &Report, file: &Path) -> Result<(), PlotError> {
    let e = err(file);
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let buckets: Vec<(u64, u64)> = r.e2e_histogram.clone();
    let n = buckets.len().max(1) as u32;
    let ymax = buckets.iter().map(|b| b.1).max().unwrap_or(1).max(1) * 11 / 10 + 1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} on {}: send-to-delivery latency histogram",
                r.scenario.name, r.target
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0u32..n).into_segmented(), 0u64..ymax)
        .map_err(|x| e(&x))?;
    let label = |v: &SegmentValue<u32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => buckets
            .get(*i as usize)
            .map(|(ub, _)| {
                let ms = *ub as f64 / 1000.0;
                if ms < 1.0 {
                    format!("{:.0}us", *ub as f64)
                } else {
                    format!("{ms:.0}ms")
                }
            })
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    };
    chart
        .configure_mesh()
        .x_desc("latency bucket (upper bound)")
        .y_desc("deliveries")
        .x_label_formatter(&label)
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(BLUE.mix(0.6).filled())
                .margin(2)
                .data(buckets.iter().enumerate().map(|(i, b)| (i as u32, b.1))),
        )
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Sends, acks and deliveries per second.
pub fn throughput(r: &Report, file: &Path) -> Result<(), PlotError> {
    let e = err(file);
    let root = SVGBackend::new(file, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let tmax = r.timeline.len().max(1) as f64;
    let ymax = r
        .timeline
        .iter()
        .map(|s| s.delivered.max(s.sent) as f64)
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{} on {}: throughput per second", r.scenario.name, r.target),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..tmax, 0f64..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("per second")
        .draw()
        .map_err(|x| e(&x))?;
    let pts = |f: fn(&crate::report::Second) -> u64| {
        r.timeline
            .iter()
            .map(move |s| (s.t as f64, f(s) as f64))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(pts(|s| s.delivered), &BLUE))
        .map_err(|x| e(&x))?
        .label("delivered")
        .legend(legend(&BLUE));
    chart
        .draw_series(LineSeries::new(pts(|s| s.sent), &RED))
        .map_err(|x| e(&x))?
        .label("sent")
        .legend(legend(&RED));
    chart
        .draw_series(LineSeries::new(pts(|s| s.acked), &GREEN))
        .map_err(|x| e(&x))?
        .label("acked")
        .legend(legend(&GREEN));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
