//! SVG figures (plotters, SVG backend): per learning rate, the instruments in the style of
//! Santurkar et al.'s figure 4 (a band over training steps per variant, one colour each), and
//! the training-loss and test-accuracy curves (mean over seeds, band from the lowest to the
//! highest seed).

use std::path::Path;

use plotters::prelude::*;

use super::network::VARIANTS;
use super::probes::Probe;
use super::training::RunCurves;
use super::{ExperimentError, ExperimentResult};

/// One colour per variant, in `VARIANTS` order.
const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(120, 120, 120),
];

/// A variant's curve: at each x, the band's low and high and the line's value.
struct Band {
    name: &'static str,
    colour: RGBColor,
    points: Vec<(f64, f64, f64, f64)>,
}

/// One chart of a figure.
struct Panel {
    title: String,
    y_label: &'static str,
    log_y: bool,
    /// Where the legend covers least of this chart's curves.
    legend: SeriesLabelPosition,
    bands: Vec<Band>,
}

/// The mean of the finite values, or NaN.
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    finite.iter().sum::<f64>() / finite.len() as f64
}

/// Per variant, over the seeds of `runs` at one learning rate: at each x of `xs`, what
/// `low`, `line` and `high` make of the seeds' values.
fn bands(
    runs: &[&RunCurves],
    xs: impl Fn(&RunCurves) -> Vec<usize>,
    per_seed: impl Fn(&RunCurves, usize) -> (f64, f64),
    seed_band: bool,
) -> Vec<Band> {
    VARIANTS
        .iter()
        .zip(COLOURS)
        .filter_map(|(variant, colour)| {
            let seeds: Vec<&&RunCurves> =
                runs.iter().filter(|r| r.variant == variant.name).collect();
            let first = seeds.first()?;
            let points = xs(first)
                .into_iter()
                .enumerate()
                .filter_map(|(k, x)| {
                    let pairs: Vec<(f64, f64)> = seeds.iter().map(|r| per_seed(r, k)).collect();
                    let point = if seed_band {
                        // One value per seed (the pair's first): mean, lowest and highest.
                        let values = pairs.iter().map(|p| p.0).filter(|v| v.is_finite());
                        let (low, high) = values
                            .fold((f64::INFINITY, f64::NEG_INFINITY), |a, v| {
                                (a.0.min(v), a.1.max(v))
                            });
                        (x as f64, low, mean(pairs.iter().map(|p| p.0)), high)
                    } else {
                        // A range per seed: the means of its ends, and their middle.
                        let low = mean(pairs.iter().map(|p| p.0));
                        let high = mean(pairs.iter().map(|p| p.1));
                        (x as f64, low, 0.5 * (low + high), high)
                    };
                    (point.1.is_finite() && point.3.is_finite()).then_some(point)
                })
                .collect();
            Some(Band {
                name: variant.name,
                colour,
                points,
            })
        })
        .collect()
}

fn probe_bands(
    runs: &[&RunCurves],
    measure: fn(&Probe) -> (f64, f64),
    seed_band: bool,
) -> Vec<Band> {
    bands(
        runs,
        |r| r.probes.iter().map(|p| p.step).collect(),
        |r, k| measure(&r.probes[k]),
        seed_band,
    )
}

/// Figure 4's three panels for one learning rate.
pub fn write_landscape(
    runs: &[&RunCurves],
    learning_rate: f64,
    path: &Path,
) -> ExperimentResult<()> {
    let panels = vec![
        Panel {
            title: "loss landscape: range of L(θ - ηg)".into(),
            y_label: "loss",
            log_y: true,
            legend: SeriesLabelPosition::UpperRight,
            bands: probe_bands(runs, |p| (p.loss_min, p.loss_max), false),
        },
        Panel {
            title: "gradient predictiveness: range of ‖∇L(θ - ηg) - g‖".into(),
            y_label: "ℓ2 change of the gradient",
            log_y: true,
            legend: SeriesLabelPosition::UpperRight,
            bands: probe_bands(
                runs,
                |p| (p.gradient_change_min, p.gradient_change_max),
                false,
            ),
        },
        Panel {
            title: "\"effective\" β-smoothness (band: seeds)".into(),
            y_label: "max ‖∇L(θ - ηg) - g‖ / ‖ηg‖",
            log_y: true,
            legend: SeriesLabelPosition::UpperRight,
            bands: probe_bands(runs, |p| (p.beta_smoothness, p.beta_smoothness), true),
        },
    ];
    let caption = format!("learning rate {learning_rate}: η = {learning_rate} x k, k in [0.5, 4]");
    draw(path, &caption, &panels)
}

/// Training-set loss and test accuracy for one learning rate.
pub fn write_curves(runs: &[&RunCurves], learning_rate: f64, path: &Path) -> ExperimentResult<()> {
    let eval_steps = |r: &RunCurves| r.eval_steps.clone();
    let panels = vec![
        Panel {
            title: "training-set loss (running statistics)".into(),
            y_label: "cross-entropy",
            log_y: true,
            legend: SeriesLabelPosition::UpperRight,
            bands: bands(
                runs,
                eval_steps,
                |r, k| (r.train_loss[k], r.train_loss[k]),
                true,
            ),
        },
        Panel {
            title: "test accuracy".into(),
            y_label: "accuracy",
            log_y: false,
            legend: SeriesLabelPosition::LowerRight,
            bands: bands(
                runs,
                eval_steps,
                |r, k| (r.test_accuracy[k], r.test_accuracy[k]),
                true,
            ),
        },
    ];
    let caption =
        format!("learning rate {learning_rate}: mean over seeds, band lowest to highest seed");
    draw(path, &caption, &panels)
}

fn draw(path: &Path, caption: &str, panels: &[Panel]) -> ExperimentResult<()> {
    let plot_error = |e: String| ExperimentError::Output {
        path: path.to_path_buf(),
        message: e,
    };
    let root = SVGBackend::new(path, (560 * panels.len() as u32, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(e.to_string()))?;
    let root = root
        .titled(caption, ("sans-serif", 20))
        .map_err(|e| plot_error(e.to_string()))?;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        draw_panel(area, panel).map_err(plot_error)?;
    }
    root.present().map_err(|e| plot_error(e.to_string()))
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let points = panel.bands.iter().flat_map(|b| &b.points);
    let x_max = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let (mut y_min, mut y_max) = points
        .filter(|p| !panel.log_y || p.1 > 0.0)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
            (a.0.min(p.1), a.1.max(p.3))
        });
    if !(y_min.is_finite() && y_max.is_finite()) {
        (y_min, y_max) = (0.1, 1.0);
    }
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60);
    let error = |e: &dyn std::fmt::Display| e.to_string();
    // A log axis within one decade would show no label.
    if panel.log_y && y_max > 10.0 * y_min {
        let y_range = (y_min * 0.9)..(y_max * 1.1);
        let mut chart = builder
            .build_cartesian_2d(0.0..x_max, y_range.log_scale())
            .map_err(|e| error(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(panel.y_label)
            .draw()
            .map_err(|e| error(&e))?;
        for band in &panel.bands {
            let kept: Vec<_> = band.points.iter().filter(|p| p.1 > 0.0).copied().collect();
            draw_band(&mut chart, band, &kept).map_err(|e| error(&e))?;
        }
        legend(&mut chart, panel.legend.clone()).map_err(|e| error(&e))
    } else {
        let pad = 0.05 * (y_max - y_min).max(1e-9);
        let mut chart = builder
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| error(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_desc(panel.y_label)
            .draw()
            .map_err(|e| error(&e))?;
        for band in &panel.bands {
            draw_band(&mut chart, band, &band.points).map_err(|e| error(&e))?;
        }
        legend(&mut chart, panel.legend.clone()).map_err(|e| error(&e))
    }
}

type Chart<'a, Y> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>;

fn draw_band<'a, Y>(
    chart: &mut Chart<'a, Y>,
    band: &Band,
    points: &[(f64, f64, f64, f64)],
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>
where
    Y: Ranged<ValueType = f64>,
{
    let outline: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.0, p.3))
        .chain(points.iter().rev().map(|p| (p.0, p.1)))
        .collect();
    chart.draw_series(std::iter::once(Polygon::new(outline, band.colour.mix(0.2))))?;
    let colour = band.colour;
    chart
        .draw_series(std::iter::once(PathElement::new(
            points.iter().map(|p| (p.0, p.2)).collect::<Vec<_>>(),
            colour.stroke_width(2),
        )))?
        .label(band.name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    Ok(())
}

fn legend<'a, Y>(
    chart: &mut Chart<'a, Y>,
    position: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>
where
    Y: Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()
}
