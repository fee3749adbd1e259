//! The report as files: JSON (serde_json), CSV (csv) and an SVG chart (plotters).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::super::case::{DTypeChoice, EpilogueChoice, LayoutChoice, Op};
use super::super::timing::{BenchResult, TimingMethod};
use super::text::{case_labels, digits3};
use super::{AdapterRun, CaseResult, CheckStatus, Report};

/// Writes the report as pretty JSON.
pub fn write_json(report: &Report, path: &Path) -> BenchResult<()> {
    let file = std::fs::File::create(path)?;
    serde_json::to_writer_pretty(std::io::BufWriter::new(file), report)?;
    Ok(())
}

/// One CSV row: a case on an adapter.
#[derive(Serialize)]
struct CsvRow<'a> {
    adapter: &'a str,
    backend: &'a str,
    timing_method: TimingMethod,
    stream_gbps: f64,
    op: Op,
    layout: LayoutChoice,
    dtype: DTypeChoice,
    epilogue: EpilogueChoice,
    format: &'a str,
    shape: String,
    elements: usize,
    gpu_median_us: f64,
    gpu_min_us: f64,
    gpu_back_to_back_us: Option<f64>,
    gbps: f64,
    percent_of_stream: f64,
    host_back_to_back_us: f64,
    host_single_us: f64,
    host_record_us: f64,
    host_submit_us: f64,
    host_record_unprepared_us: f64,
    reference_ms: f64,
    max_abs_error: f64,
    params_max_abs_error: Option<f64>,
    check: CheckStatus,
}

/// One CSV row of a chain run: a layout on an adapter.
#[derive(Serialize)]
struct ChainCsvRow<'a> {
    adapter: &'a str,
    backend: &'a str,
    timing_method: TimingMethod,
    chain: &'a str,
    layout: LayoutChoice,
    batch: usize,
    layers: usize,
    steps: usize,
    host_record_us: f64,
    host_submit_us: f64,
    gpu_step_us: f64,
    back_to_back_us: f64,
    passed: bool,
}

/// Writes one CSV row per adapter and case (or per adapter and layout of a chain), under a
/// header.
pub fn write_csv(report: &Report, path: &Path) -> BenchResult<()> {
    let mut writer = csv::Writer::from_path(path)?;
    for run in &report.runs {
        for chain in &run.chains {
            writer.serialize(ChainCsvRow {
                adapter: &run.adapter.name,
                backend: &run.adapter.backend,
                timing_method: run.timing_method,
                chain: chain.chain.name(),
                layout: chain.layout,
                batch: chain.batch,
                layers: chain.layers,
                steps: chain.steps,
                host_record_us: chain.host_record_us,
                host_submit_us: chain.host_submit_us,
                gpu_step_us: chain.gpu_step_us,
                back_to_back_us: chain.back_to_back_us,
                passed: chain.passed(),
            })?;
        }
        for case in &run.cases {
            writer.serialize(CsvRow {
                adapter: &run.adapter.name,
                backend: &run.adapter.backend,
                timing_method: run.timing_method,
                stream_gbps: run.stream.gbps,
                op: case.op,
                layout: case.layout,
                dtype: case.dtype,
                epilogue: case.epilogue,
                format: &case.format,
                shape: case
                    .shape
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("x"),
                elements: case.elements,
                gpu_median_us: case.gpu_median_us,
                gpu_min_us: case.gpu_min_us,
                gpu_back_to_back_us: case.gpu_back_to_back_us,
                gbps: case.gbps,
                percent_of_stream: case.percent_of_stream,
                host_back_to_back_us: case.host_back_to_back_us,
                host_single_us: case.host_single_us,
                host_record_us: case.host_record_us,
                host_submit_us: case.host_submit_us,
                host_record_unprepared_us: case.host_record_unprepared_us,
                reference_ms: case.reference_ms,
                max_abs_error: case.max_abs_error,
                params_max_abs_error: case.params_max_abs_error,
                check: case.check,
            })?;
        }
    }
    writer.flush()?;
    Ok(())
}

/// Writes the chart: for each case, GB/s (left) and percent of the stream kernel (right), one
/// bar per adapter.
pub fn write_svg(report: &Report, path: &Path) -> BenchResult<()> {
    let labels = case_labels(report);
    // One series per adapter: a value per case label, `None` where the case did not run.
    let series = |value: fn(&CaseResult) -> f64| -> Vec<Vec<Option<f64>>> {
        report
            .runs
            .iter()
            .map(|run| {
                labels
                    .iter()
                    .map(|label| run.cases.iter().find(|c| &c.label() == label).map(value))
                    .collect()
            })
            .collect()
    };
    let row_height = 12 + 12 * report.runs.len() as u32;
    let width = 1400;
    let legend_height = 16 + 20 * report.runs.len() as u32;
    let height = 130 + legend_height + row_height * labels.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("bnbench {}: batch norm, f32", report.date_utc),
        ("sans-serif", 20),
    )?;
    let (panels, legend) = root.split_vertically(root.dim_in_pixel().1 - legend_height);
    let (left, right) = panels.split_horizontally(width * 62 / 100);
    draw_panel(
        &left,
        "GB/s at the minimum bytes (median GPU time)",
        &labels,
        &series(|c| c.gbps),
        true,
    )?;
    draw_panel(
        &right,
        "% of the stream kernel on the same adapter",
        &labels,
        &series(|c| c.percent_of_stream),
        false,
    )?;
    draw_legend(&legend, &report.runs)?;
    root.present()?;
    Ok(())
}

/// Horizontal bars: cases top to bottom, one bar per series in each case's band.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    labels: &[String],
    series: &[Vec<Option<f64>>],
    with_labels: bool,
) -> BenchResult<()>
where
    DB::ErrorType: 'static,
{
    let rows = labels.len();
    if rows == 0 {
        area.draw(&Text::new(
            format!("{caption}: no case ran"),
            (20, 40),
            ("sans-serif", 16),
        ))?;
        return Ok(());
    }
    let largest = series
        .iter()
        .flat_map(|values| values.iter().flatten())
        .fold(0.0_f64, |m, &v| m.max(v));
    let x_max = if largest > 0.0 { largest * 1.2 } else { 1.0 };
    // Row i (from the top) spans y in [(rows - 1 - i) * ROW, (rows - i) * ROW); integer
    // coordinates, since plotters formats custom key points only on those.
    const ROW: i32 = 100;
    let rows_i32 = i32::try_from(rows).map_err(|_| "too many cases to chart")?;
    let centers: Vec<i32> = (0..rows_i32).map(|i| i * ROW + ROW / 2).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(if with_labels { 270 } else { 8 })
        .build_cartesian_2d(0.0..x_max, (0..rows_i32 * ROW).with_key_points(centers))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_label_formatter(&|y| {
            let from_top = usize::try_from(rows_i32 - 1 - y.div_euclid(ROW)).ok();
            match from_top.filter(|_| with_labels) {
                Some(i) => labels.get(i).cloned().unwrap_or_default(),
                None => String::new(),
            }
        })
        .label_style(("sans-serif", 12))
        .max_light_lines(1)
        .draw()?;
    let count = i32::try_from(series.len().max(1)).map_err(|_| "too many adapters to chart")?;
    let band = (ROW * 8 / 10 / count).max(1);
    let text_style = TextStyle::from(("sans-serif", 11).into_font()).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ),
    );
    for (k, values) in (0..).zip(series) {
        let color = Palette99::pick(k as usize).to_rgba();
        // Series k's bar in row i (from the top): first series on top.
        let bottom = |i: usize| (rows_i32 - 1 - i as i32) * ROW + ROW * 9 / 10 - band * (k + 1);
        chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| Rectangle::new([(0.0, bottom(i)), (v, bottom(i) + band)], color.filled()))
        }))?;
        chart.draw_series(values.iter().enumerate().filter_map(|(i, v)| {
            v.map(|v| {
                Text::new(
                    format!(" {}", digits3(v)),
                    (v, bottom(i) + band / 2),
                    text_style.clone(),
                )
            })
        }))?;
    }
    Ok(())
}

/// The legend strip under the panels: each adapter's color, name, roofline and timing method.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    runs: &[AdapterRun],
) -> BenchResult<()>
where
    DB::ErrorType: 'static,
{
    for (k, run) in (0..).zip(runs) {
        let y = 8 + 20 * k;
        let color = Palette99::pick(k as usize).to_rgba();
        area.draw(&Rectangle::new([(20, y), (34, y + 12)], color.filled()))?;
        area.draw(&Text::new(
            format!(
                "{}: stream kernel {:.1} GB/s; {}",
                run.adapter.short(),
                run.stream.gbps,
                run.timing_method.describe()
            ),
            (42, y),
            ("sans-serif", 13),
        ))?;
    }
    Ok(())
}
