//! The `gamma_beta` experiment (`examples/gamma_beta/`): its `--quick` run for real on a GPU
//! adapter, checking the structure of every output (files, fields, curve lengths), not its
//! conclusions; that a probe leaves the batch norms' running statistics and batch counts bit
//! for bit as they were; that a seed gives the same numbers twice; the host network's gradient
//! against central differences; the data file, its split and its refusals; the t quantiles;
//! and the command line's refusals.
//!
//! The program is included as a module and its `run` called with a command line, as
//! `tests/bnbench_outputs.rs` does for bnbench.

#[allow(dead_code)] // The program's `main` is not called here.
#[path = "../examples/gamma_beta/main.rs"]
mod gamma_beta;

use std::path::{Path, PathBuf};

use clap::Parser;
use gamma_beta::cli::Cli;
use gamma_beta::data::{self, DataError};
use gamma_beta::gpu_norm::GpuNorm;
use gamma_beta::network::{Mode, Network, Parameters, VARIANTS};
use gamma_beta::reference_norm::ReferenceNorm;
use gamma_beta::training::{self, Cadence, Schedule};
use gamma_beta::{probes, stats};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use wgpu_batchnorm::GpuContext;

fn data_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz")
}

/// A fresh folder under the system's temporary folder, removed when dropped (a failing test
/// too).
fn scratch_dir() -> TempDir {
    tempfile::tempdir().expect("create a temporary folder")
}

fn context() -> GpuContext {
    GpuContext::new().unwrap_or_else(|e| {
        panic!("GPU tests need an adapter (bash .ci/install-gpu-drivers.sh): {e}")
    })
}

fn array_len(value: &Value, key: &str) -> usize {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array in {value}"))
        .len()
}

#[test]
fn quick_run_writes_every_output() {
    let scratch = scratch_dir();
    let out = scratch.path();
    let cli = Cli::try_parse_from(["gamma_beta", "--quick", "--out", out.to_str().unwrap()])
        .expect("a valid command line");
    let report = gamma_beta::run(&cli).unwrap_or_else(|e| panic!("the quick run failed: {e}"));
    let (seeds, steps, every) = (2, 12, 4);
    let rates = [0.05, 0.1, 0.5];
    let runs = rates.len() * VARIANTS.len() * seeds;
    assert_eq!(report.runs.len(), runs);

    let root: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("results.json")).expect("results.json written"),
    )
    .expect("valid JSON");
    assert!(!root["adapter"].as_str().unwrap_or("").is_empty());
    assert!(root["seconds"].as_f64().is_some_and(|s| s > 0.0));
    let check = &root["startup_check"];
    assert!(check["worst"].as_f64().unwrap() <= check["tolerance"].as_f64().unwrap());
    assert_eq!(root["settings"]["cadence"]["steps"], steps);
    assert_eq!(array_len(&root, "primary"), rates.len() * VARIANTS.len());
    for row in root["primary"].as_array().unwrap() {
        for measure in ["final_train_loss", "final_test_accuracy"] {
            let interval = &row[measure];
            for key in ["mean", "low", "high"] {
                // Present (indexing a missing key gives null too), a number or null (NaN).
                assert!(
                    interval
                        .get(key)
                        .is_some_and(|v| v.is_number() || v.is_null()),
                    "{key}: {row}"
                );
            }
            assert_eq!(array_len(interval, "values"), seeds, "{row}");
        }
    }
    // Two arrangements, two measures, three learning rates.
    assert_eq!(array_len(&root, "comparisons"), 12);
    for comparison in root["comparisons"].as_array().unwrap() {
        assert!(comparison["verdict"]
            .as_str()
            .is_some_and(|v| !v.is_empty()));
    }
    let evals: Vec<u64> = (0..=steps).step_by(every).map(|s| s as u64).collect();
    let probe_steps: Vec<u64> = (0..steps).step_by(every).map(|s| s as u64).collect();
    let runs_json = root["runs"].as_array().expect("runs");
    assert_eq!(runs_json.len(), runs);
    for run in runs_json {
        assert_eq!(
            array_len(run, "minibatch_loss"),
            steps,
            "{}",
            run["variant"]
        );
        let eval_steps: Vec<u64> = run["eval_steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect();
        assert_eq!(eval_steps, evals);
        assert_eq!(array_len(run, "train_loss"), evals.len());
        assert_eq!(array_len(run, "test_accuracy"), evals.len());
        let probes = run["probes"].as_array().unwrap();
        let steps_probed: Vec<u64> = probes.iter().map(|p| p["step"].as_u64().unwrap()).collect();
        assert_eq!(steps_probed, probe_steps);
        for probe in probes {
            for key in [
                "loss_min",
                "loss_max",
                "gradient_change_min",
                "gradient_change_max",
                "beta_smoothness",
            ] {
                assert!(
                    probe.get(key).is_some_and(|v| v.is_number() || v.is_null()),
                    "{key}: {probe}"
                );
            }
        }
    }

    // curves.csv: every point of every curve.
    let mut reader = csv::Reader::from_path(out.join("curves.csv")).expect("curves.csv written");
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        ["variant", "learning_rate", "seed", "step", "curve", "value"]
    );
    let points_per_run = steps + 2 * evals.len() + 5 * probe_steps.len();
    assert_eq!(reader.records().count(), runs * points_per_run);
    let mut reader = csv::Reader::from_path(out.join("primary.csv")).expect("primary.csv written");
    assert_eq!(reader.records().count(), rates.len() * VARIANTS.len() * 2);

    // Two figures per learning rate, each naming every variant.
    for rate in rates {
        for figure in ["landscape", "curves"] {
            let path = out.join(format!("{figure}-lr{rate}.svg"));
            let svg = std::fs::read_to_string(&path).expect("an SVG written");
            assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            for variant in VARIANTS {
                assert!(
                    svg.contains(variant.name),
                    "{} lacks {}",
                    path.display(),
                    variant.name
                );
            }
        }
    }
}

/// One training step of an affine variant, then a probe: every layer's running statistics
/// and batch count are bit for bit what they were before the probe.
#[test]
fn a_probe_leaves_the_running_statistics_alone() {
    let ctx = context();
    let split = data::split(&data::load(&data_path()).expect("the data"));
    for variant in [VARIANTS[0], VARIANTS[2]] {
        let params = Parameters::initial(3, variant);
        let mut norm = GpuNorm::new(&ctx, variant.affine).expect("batch norms");
        let rows: Vec<usize> = Schedule::new(3, split.train.labels.len()).next_batch();
        let (x, labels) = training::batch::<f32>(&split.train, &rows);
        let state = |norm: &GpuNorm| -> Vec<(Vec<u32>, Vec<u32>, u64)> {
            norm.layers()
                .iter()
                .map(|layer| {
                    let (mean, var) = layer.running_statistics().expect("tracked");
                    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect();
                    (bits(mean), bits(var), layer.num_batches_tracked())
                })
                .collect()
        };
        let initial = state(&norm);
        let (_, gradient) = Network {
            params: &params,
            variant,
            norm: &mut norm,
        }
        .loss_and_gradient(&x, &labels, Mode::Train)
        .expect("a training step");
        let after_step = state(&norm);
        assert_ne!(
            after_step, initial,
            "a training step updates the running statistics"
        );
        assert!(after_step.iter().all(|layer| layer.2 == 1));
        probes::probe(0, &params, &gradient, variant, &mut norm, &x, &labels, 0.5)
            .expect("a probe");
        assert_eq!(
            state(&norm),
            after_step,
            "{}: the probe changed a layer",
            variant.name
        );
    }
}

#[test]
fn a_seed_gives_the_same_numbers_twice() {
    let ctx = context();
    let split = data::split(&data::load(&data_path()).expect("the data"));
    let cadence = Cadence {
        steps: 3,
        probe_every: 2,
        eval_every: 3,
    };
    let progress = indicatif::ProgressBar::hidden();
    let run =
        || training::train(&ctx, &split, VARIANTS[0], 0.1, 7, cadence, &progress).expect("a run");
    let (first, second) = (run(), run());
    let bits = |curves: &training::RunCurves| -> Vec<u64> {
        let probes = curves.probes.iter().flat_map(|p| {
            [
                p.loss_min,
                p.loss_max,
                p.gradient_change_min,
                p.gradient_change_max,
                p.beta_smoothness,
            ]
        });
        curves
            .minibatch_loss
            .iter()
            .chain(&curves.train_loss)
            .chain(&curves.test_accuracy)
            .copied()
            .chain(probes)
            .map(f64::to_bits)
            .collect()
    };
    assert_eq!(bits(&first), bits(&second));
}

/// The host network's backward (shared by the GPU run and the f64 start-up check) against
/// central differences of the f64 network, batch norms from batch statistics: with h = 1e-6
/// the difference quotient is within ~1e-10 of the derivative (truncation h^2 |L'''|, rounding
/// 1e-16 |L| / h), so 1e-7 of slack on gradients of order 1e-3 to 1 catches any wrong term.
#[test]
fn the_host_gradient_matches_central_differences() {
    let split = data::split(&data::load(&data_path()).expect("the data"));
    let rows: Vec<usize> = (0..16).collect();
    let (x, labels) = training::batch::<f64>(&split.train, &rows);
    for variant in VARIANTS {
        let params = Parameters::initial(11, variant).widened();
        let mut norm = ReferenceNorm::default();
        let mut loss_at = |params: &Parameters<f64>| -> (f64, Parameters<f64>) {
            Network {
                params,
                variant,
                norm: &mut norm,
            }
            .loss_and_gradient(&x, &labels, Mode::Probe)
            .expect("a pass")
        };
        let (_, gradient) = loss_at(&params);
        let h = 1e-6;
        // A few coordinates of every weight, bias, gamma and beta.
        type Pick = fn(&mut Parameters<f64>, usize) -> &mut [f64];
        let picks: [(&str, usize, Pick); 4] = [
            ("weight", 4, |p, l| p.weights[l].as_slice_mut().unwrap()),
            ("bias", 4, |p, l| p.biases[l].as_slice_mut().unwrap()),
            ("gamma", 3, |p, l| p.gamma[l].as_slice_mut().unwrap()),
            ("beta", 3, |p, l| p.beta[l].as_slice_mut().unwrap()),
        ];
        for (what, layers, pick) in picks {
            if (what == "gamma" || what == "beta") && params.gamma.is_empty() {
                continue;
            }
            for layer in 0..layers {
                let len = pick(&mut params.clone(), layer).len();
                for index in [0, len / 3, len - 1] {
                    let moved = |delta: f64| {
                        let mut p = params.clone();
                        pick(&mut p, layer)[index] += delta;
                        p
                    };
                    let numeric = (loss_at(&moved(h)).0 - loss_at(&moved(-h)).0) / (2.0 * h);
                    let analytic = pick(&mut gradient.clone(), layer)[index];
                    assert!(
                        (numeric - analytic).abs() <= 1e-7,
                        "{}: d loss / d {what}[{layer}][{index}] = {analytic}, central \
                         difference {numeric}",
                        variant.name
                    );
                }
            }
        }
    }
}

#[test]
fn the_data_file_is_the_published_one() {
    let bytes = std::fs::read(data_path()).expect("data/digits.csv.gz");
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
    );
    assert_eq!(digest, data::DIGITS_SHA256);
    let digits = data::load(&data_path()).expect("it loads");
    assert_eq!(digits.images.dim(), (1797, 64));
    assert!(digits.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
    // load_digits' first image is a 0 whose first row is 0, 0, 5, 13, 9, 1, 0, 0.
    assert_eq!(digits.labels[0], 0);
    let first_row: Vec<f32> = digits
        .images
        .row(0)
        .iter()
        .take(8)
        .map(|p| p * 16.0)
        .collect();
    assert_eq!(first_row, [0.0, 0.0, 5.0, 13.0, 9.0, 1.0, 0.0, 0.0]);
}

#[test]
fn the_split_is_stratified_and_fixed() {
    let digits = data::load(&data_path()).expect("the data");
    let split = data::split(&digits);
    assert_eq!(split.train.labels.len() + split.test.labels.len(), 1797);
    for class in 0..10 {
        let count = |labels: &[usize]| labels.iter().filter(|&&l| l == class).count();
        let (train, test) = (count(&split.train.labels), count(&split.test.labels));
        let share = (train + test) as f64 * 500.0 / 1797.0;
        assert!(
            (test as f64 - share).abs() <= 0.5,
            "class {class}: {test} of {}",
            train + test
        );
    }
    assert!((495..=505).contains(&split.test.labels.len()));
    let again = data::split(&digits);
    assert_eq!(again.test.labels, split.test.labels);
    assert_eq!(again.test.images, split.test.images);
}

#[test]
fn bad_data_is_refused_with_where_it_comes_from() {
    let missing = data::load(Path::new("/nonexistent/digits.csv.gz")).expect_err("missing");
    assert!(matches!(missing, DataError::Unreadable { .. }));
    let message = missing.to_string();
    for words in [
        "/nonexistent/digits.csv.gz",
        "data/digits.csv.gz",
        "scikit-learn",
    ] {
        assert!(
            message.contains(words),
            "'{message}' does not say '{words}'"
        );
    }
    let scratch = scratch_dir();
    let dir = scratch.path();
    let truncated = dir.join("digits.csv.gz");
    let bytes = std::fs::read(data_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = data::load(&truncated).expect_err("truncated");
    assert!(matches!(error, DataError::Checksum { .. }), "{error:?}");
    assert!(error.to_string().contains("scikit-learn"));

    let row = |pixels: &str, label: &str| format!("{pixels},{label}");
    let zeros = vec!["0"; 64].join(",");
    let cases = [
        (row(&vec!["0"; 63].join(","), "1"), "fields"),
        (row(&zeros.replacen('0', "17", 1), "1"), "pixel"),
        (row(&zeros.replacen('0', "x", 1), "1"), "pixel"),
        (row(&zeros, "10"), "label"),
        (row(&zeros, "2.5"), "label"),
    ];
    for (text, word) in cases {
        let error = data::parse(&text).expect_err("a bad row");
        assert!(matches!(error, DataError::Row { line: 1, .. }), "{error:?}");
        assert!(error.to_string().contains(word), "{error}");
    }
    let one_row = row(&zeros, "3");
    assert!(matches!(
        data::parse(&one_row),
        Err(DataError::Count { rows: 1 })
    ));
}

/// Tabulated 0.975 quantiles of Student's t (any statistics table).
#[test]
fn t_quantiles_match_the_tables() {
    for (df, want) in [
        (1, 12.706205),
        (2, 4.302653),
        (4, 2.776445),
        (9, 2.262157),
        (30, 2.042272),
    ] {
        let got = stats::t_quantile_975(df);
        assert!((got - want).abs() < 1e-5, "df {df}: {got}, want {want}");
    }
    let interval = stats::Interval::of(&[1.0, 2.0, 3.0, f64::NAN]);
    assert_eq!((interval.mean, interval.diverged), (2.0, 1));
    // s = 1, n = 3: half-width t(2) / sqrt(3).
    assert!((interval.high - 2.0 - 4.302653 / 3f64.sqrt()).abs() < 1e-5);
}

#[test]
fn out_of_range_arguments_are_refused() {
    for args in [
        &["--seeds", "1"][..],
        &["--seeds", "many"],
        &["--steps", "0"],
        &["--probe-every", "0"],
        &["--learning-rates", "0"],
        &["--learning-rates", "0.1,-1"],
        &["--learning-rates", "11"],
        &["--learning-rates", "fast"],
    ] {
        let line = [&["gamma_beta"][..], args].concat();
        let error = Cli::try_parse_from(line).expect_err("out of range");
        assert!(
            error
                .to_string()
                .contains(args[1].split(',').next_back().unwrap()),
            "{args:?}: {error}"
        );
    }
}
