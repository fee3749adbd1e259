//! Runs `bnbench --quick` for real on a GPU adapter (the software one in CI) and checks every
//! output it writes: JSON, CSV, Markdown and SVG; and `--breakdown`'s per-dispatch times.
//!
//! The program's own code is included as a module and its `run` is called with a command line:
//! the same code path as `cargo run --example bnbench -- ...`, without building the example a
//! second time (in release) from inside the test. `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` choose
//! the adapter, as they do for the program.

#[allow(dead_code)] // The program's `main` is not called here.
#[path = "../examples/bnbench/main.rs"]
mod bnbench;

use std::collections::BTreeSet;

use clap::Parser;
use serde_json::Value;
use tempfile::TempDir;

/// One case of the quick suite, written out independently of the program.
struct ExpectedCase {
    op: &'static str,
    layout: &'static str,
    shape: Vec<usize>,
    /// The memory order as the tables name it.
    format: &'static str,
}

/// Both layouts of a 4-D shape, as `(layout, format)`.
const FOUR_D: &[(&str, &str)] = &[("channels-first", "NCHW"), ("channels-last", "NHWC")];
/// A 2-D shape is the same memory in both layouts and runs once, as channels-first.
const TWO_D: &[(&str, &str)] = &[("channels-first", "NC")];

/// The quick suite: shapes, then layouts, then operations.
fn expected_cases() -> Vec<ExpectedCase> {
    let mut cases = Vec::new();
    for (shape, layouts) in [
        (vec![32, 64, 8, 8], FOUR_D),
        (vec![256, 1024], TWO_D),
        (vec![8, 32, 28, 28], FOUR_D),
    ] {
        for &(layout, format) in layouts {
            for op in ["train-forward", "eval-forward", "backward"] {
                cases.push(ExpectedCase {
                    op,
                    layout,
                    shape: shape.clone(),
                    format,
                });
            }
        }
    }
    cases
}

fn label(op: &str, shape: &[usize], format: &str) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("{op} {} {format}", dims.join("x"))
}

/// A fresh directory under the system's temporary directory, removed when dropped (a failing
/// test too).
fn scratch_dir() -> TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// The numbers of a JSON list (`what` names it in a failure).
fn numbers(list: &Value, what: &str) -> Vec<f64> {
    list.as_array()
        .unwrap_or_else(|| panic!("{what}: not a list: {list}"))
        .iter()
        .map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("{what}: {v} is not a number"))
        })
        .collect()
}

fn positive(case: &Value, key: &str) -> f64 {
    let value = case[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {case}"));
    assert!(
        value.is_finite() && value > 0.0,
        "{key} = {value} is not a finite positive number in {case}"
    );
    value
}

#[test]
fn quick_suite_writes_every_format() {
    let dir = scratch_dir();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (json, csv, markdown, svg) = (path("q.json"), path("q.csv"), path("q.md"), path("q.svg"));
    let cli = bnbench::cli::Cli::try_parse_from([
        "bnbench",
        "--quick",
        "--json",
        &json,
        "--csv",
        &csv,
        "--markdown",
        &markdown,
        "--svg",
        &svg,
    ])
    .expect("a valid command line");
    let report = bnbench::run(&cli)
        .unwrap_or_else(|e| panic!("bnbench --quick failed: {e}"))
        .expect("a run (not --list) returns a report");
    assert_eq!(report.failures(), 0, "some case failed its check");

    let expected = expected_cases();
    let expected_keys: BTreeSet<(String, String, Vec<usize>)> = expected
        .iter()
        .map(|case| {
            (
                case.op.to_string(),
                case.layout.to_string(),
                case.shape.clone(),
            )
        })
        .collect();
    let labels: Vec<String> = expected
        .iter()
        .map(|case| label(case.op, &case.shape, case.format))
        .collect();

    // JSON: one run, every case once, each with a time and a reference error.
    let text = std::fs::read_to_string(&json).expect("the JSON file was written");
    let root: Value = serde_json::from_str(&text).expect("valid JSON");
    let runs = root["runs"].as_array().expect("a runs array");
    assert_eq!(runs.len(), 1, "one adapter ran");
    let run = &runs[0];
    assert!(!run["adapter"]["name"].as_str().unwrap_or("").is_empty());
    assert!(matches!(
        run["timing_method"].as_str(),
        Some("gpu-timestamps" | "wall-clock")
    ));
    // The stream kernel measured before and after the cases; the faster is the roofline.
    let stream_gbps = positive(&run["stream"], "gbps");
    let measured = numbers(
        &run["stream_measurements_gbps"],
        "the stream kernel's measurements",
    );
    assert_eq!(measured.len(), 2, "before and after the cases");
    assert_eq!(stream_gbps, measured[0].max(measured[1]));
    assert_eq!(run["skipped"].as_array().map(Vec::len), Some(0));
    let cases = run["cases"].as_array().expect("a cases array");
    assert_eq!(cases.len(), expected.len(), "one entry per case");
    let mut seen = BTreeSet::new();
    for case in cases {
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .expect("a shape array")
            .iter()
            .map(|d| d.as_u64().expect("a size") as usize)
            .collect();
        let op = case["op"].as_str().expect("an op").to_string();
        let layout = case["layout"].as_str().expect("a layout").to_string();
        assert!(
            seen.insert((op.clone(), layout, shape.clone())),
            "{op} {shape:?} twice"
        );
        let median = positive(case, "gpu_median_us");
        let min = positive(case, "gpu_min_us");
        assert!(min <= median, "minimum above median in {case}");
        assert!(
            case.get("breakdown").is_none(),
            "a breakdown without --breakdown in {case}"
        );
        for key in [
            "gpu_back_to_back_us",
            "gbps",
            "percent_of_stream",
            "host_back_to_back_us",
            "host_single_us",
            "host_record_us",
            "host_submit_us",
            "host_record_unprepared_us",
            "reference_ms",
        ] {
            positive(case, key);
        }
        let percent = 100.0 * case["gbps"].as_f64().unwrap() / stream_gbps;
        assert!(
            (case["percent_of_stream"].as_f64().unwrap() - percent).abs() <= 1e-9 * percent,
            "percent_of_stream not against the faster stream measurement in {case}"
        );
        let error = case["max_abs_error"].as_f64().expect("max_abs_error");
        // Unit-spread data with gamma in [0.5, 1.5): float32 results are within ~1e-5.
        assert!(error.is_finite() && error < 1e-3, "error {error} in {case}");
        if op == "backward" {
            let params = case["params_max_abs_error"]
                .as_f64()
                .expect("dgamma/dbeta error");
            assert!(
                params.is_finite() && params < 1e-2,
                "dgamma/dbeta error in {case}"
            );
        }
        assert_eq!(case["check"], "passed");
    }
    assert_eq!(
        seen, expected_keys,
        "the JSON holds exactly the quick suite"
    );

    // CSV: a header, then one row per case.
    let mut reader = csv::Reader::from_path(&csv).expect("the CSV file was written");
    let header = reader.headers().expect("a CSV header").clone();
    for column in [
        "op",
        "layout",
        "shape",
        "gpu_median_us",
        "gpu_back_to_back_us",
        "max_abs_error",
        "check",
    ] {
        assert!(header.iter().any(|h| h == column), "no {column} column");
    }
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .expect("well-formed CSV rows");
    assert_eq!(rows.len(), expected.len(), "one CSV row per case");
    let column = |name: &str| header.iter().position(|h| h == name).expect("column");
    for row in &rows {
        for name in ["gpu_median_us", "gpu_back_to_back_us"] {
            let value: f64 = row[column(name)].parse().expect("a number");
            assert!(value.is_finite() && value > 0.0, "{name} = {value}");
        }
        assert_eq!(&row[column("check")], "passed");
    }

    // Markdown: a table with a row per case.
    let markdown = std::fs::read_to_string(&markdown).expect("the Markdown file was written");
    assert!(markdown.contains("| case |"), "no table header");
    assert!(markdown.contains("GPU b2b us"), "no back-to-back column");
    assert!(
        !markdown.contains("Per dispatch"),
        "a breakdown without --breakdown"
    );
    assert!(markdown.contains("| --- |"), "no table rule");
    for label in &labels {
        assert!(
            markdown.contains(&format!("| {label} |")),
            "no table row for {label}"
        );
    }

    // SVG: a complete document that names every case.
    let svg = std::fs::read_to_string(&svg).expect("the SVG file was written");
    assert!(svg.trim_start().starts_with("<svg"), "not an SVG document");
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "SVG document not closed"
    );
    assert!(svg.contains("<rect"), "no bars in the chart");
    for label in &labels {
        assert!(
            svg.contains(label.as_str()),
            "the chart does not name {label}"
        );
    }
}

/// ResNet-50's batch norms, counted independently of the program: torchvision's resnet50 has
/// 53 `BatchNorm2d` layers whose weights and biases hold 53,120 values (26,560 channels).
#[test]
fn the_resnet50_chain_is_resnet50s_batch_norms() {
    let layers = bnbench::chain::Chain::Resnet50.layers();
    assert_eq!(layers.len(), 53);
    assert_eq!(layers.iter().map(|l| l.channels).sum::<usize>(), 26_560);
    let names: BTreeSet<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names.len(), 53, "names are unique");
    let find = |name: &str| {
        layers
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    // (name, channels, side): the stem, a stage's first block (its first batch norm still at
    // the previous stage's side), a projection shortcut, the last layer.
    for (name, channels, side) in [
        ("bn1", 64, 112),
        ("layer1.0.bn1", 64, 56),
        ("layer2.0.bn1", 128, 56),
        ("layer2.0.bn2", 128, 28),
        ("layer3.0.downsample.1", 1024, 14),
        ("layer3.5.bn3", 1024, 14),
        ("layer4.2.bn3", 2048, 7),
    ] {
        let layer = find(name);
        assert_eq!((layer.channels, layer.size), (channels, side), "{name}");
    }
    assert_eq!(layers[0].name, "bn1");
    assert_eq!(layers[52].name, "layer4.2.bn3");
}

/// `--chain resnet50` at batch 1 in both layouts: each layout's host and GPU times per step and
/// its checked sample, in every format.
#[test]
fn the_chain_writes_its_measurements() {
    let dir = scratch_dir();
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (json, csv, markdown) = (path("c.json"), path("c.csv"), path("c.md"));
    let cli = bnbench::cli::Cli::try_parse_from([
        "bnbench",
        "--chain",
        "resnet50",
        "--batch",
        "1",
        "--reps",
        "2",
        "--warmup-ms",
        "0",
        "--rotate-mib",
        "4",
        "--json",
        &json,
        "--csv",
        &csv,
        "--markdown",
        &markdown,
    ])
    .expect("a valid command line");
    let report = bnbench::run(&cli)
        .unwrap_or_else(|e| panic!("bnbench --chain failed: {e}"))
        .expect("a report");
    assert_eq!(report.failures(), 0, "the chain's sample failed its check");

    let root: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
        .expect("valid JSON");
    let run = &root["runs"][0];
    assert_eq!(run["cases"].as_array().map(Vec::len), Some(0), "no suite");
    let chains = run["chains"].as_array().expect("a chains array");
    let layouts: Vec<&str> = chains
        .iter()
        .map(|c| c["layout"].as_str().expect("a layout"))
        .collect();
    assert_eq!(layouts, ["channels-first", "channels-last"]);
    for chain in chains {
        assert_eq!(chain["chain"], "resnet50");
        assert_eq!(chain["layers"], 53);
        assert_eq!(chain["batch"], 1);
        assert_eq!(chain["steps"], 2);
        // Values per sample of ResNet-50's batch-norm inputs at 224x224.
        assert_eq!(chain["elements"], 11_113_984);
        for key in [
            "host_record_us",
            "host_submit_us",
            "gpu_step_us",
            "back_to_back_us",
        ] {
            positive(chain, key);
        }
        let checks = chain["checks"].as_array().expect("checked samples");
        let sampled: Vec<(&str, &str)> = checks
            .iter()
            .map(|c| (c["layer"].as_str().unwrap(), c["op"].as_str().unwrap()))
            .collect();
        assert_eq!(
            sampled,
            [("layer4.2.bn3", "train-forward"), ("bn1", "backward")]
        );
        for check in checks {
            let error = check["check"]["max_abs_error"].as_f64().expect("an error");
            assert!(error.is_finite() && error < 1e-3, "{check}");
            assert_eq!(check["check"]["passed"], true);
        }
    }

    let mut reader = csv::Reader::from_path(&csv).expect("CSV written");
    let header = reader.headers().expect("a header").clone();
    for column in ["chain", "layout", "host_record_us", "gpu_step_us", "passed"] {
        assert!(header.iter().any(|h| h == column), "no {column} column");
    }
    assert_eq!(reader.records().count(), 2, "a row per layout");

    let markdown = std::fs::read_to_string(&markdown).expect("Markdown written");
    for row in [
        "| resnet50 channels-first batch 1 |",
        "| resnet50 channels-last batch 1 |",
    ] {
        assert!(markdown.contains(row), "no row {row}");
    }
}

/// `--dtype` and `--epilogue`: every combination runs, is checked, is labelled with its type
/// and epilogue, and counts the bytes it must move at its storage size (the backward of
/// add-ReLU in bf16 reads x, dy and y and writes dx and dz: 10 bytes per element).
#[test]
fn storage_types_and_epilogues_are_cases_of_their_own() {
    let (report, root) = run_to_json(&[
        "--shape",
        "4,6,5,5",
        "--layout",
        "channels-last",
        "--dtype",
        "bf16",
        "--dtype",
        "f32",
        "--epilogue",
        "add-relu",
        "--epilogue",
        "relu",
        "--reps",
        "2",
    ]);
    let cases = root["runs"][0]["cases"].as_array().expect("cases");
    let seen: Vec<(String, String, String)> = cases
        .iter()
        .map(|c| {
            (
                c["dtype"].as_str().unwrap().to_string(),
                c["epilogue"].as_str().unwrap().to_string(),
                c["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = Vec::new();
    for dtype in ["bf16", "f32"] {
        for epilogue in ["add-relu", "relu"] {
            for op in ["train-forward", "eval-forward", "backward"] {
                want.push((dtype.to_string(), epilogue.to_string(), op.to_string()));
            }
        }
    }
    assert_eq!(
        seen, want,
        "dtypes, then epilogues, then operations, in the order given"
    );
    let elements = 4 * 6 * 5 * 5;
    for case in cases {
        let bytes_per_element = match (
            case["dtype"].as_str().unwrap(),
            case["epilogue"].as_str().unwrap(),
            case["op"].as_str().unwrap(),
        ) {
            ("bf16", "add-relu", "backward") => 10,
            ("bf16", "relu", "backward") => 8,
            ("bf16", "add-relu", _) => 6,
            ("bf16", "relu", _) => 4,
            ("f32", "add-relu", "backward") => 20,
            ("f32", "relu", "backward") => 16,
            ("f32", "add-relu", _) => 12,
            _ => 8,
        };
        assert_eq!(case["min_bytes"], elements * bytes_per_element, "{case}");
        assert_eq!(case["check"], "passed");
    }
    let label = |c: &Value| {
        format!(
            "{} 4x6x5x5 NHWC{}",
            c["op"].as_str().unwrap(),
            match (
                c["dtype"].as_str().unwrap(),
                c["epilogue"].as_str().unwrap()
            ) {
                ("f32", e) => format!(" {e}"),
                (d, e) => format!(" {d} {e}"),
            }
        )
    };
    for (case, result) in cases.iter().zip(&report.runs[0].cases) {
        assert_eq!(result.label(), label(case));
    }
}

/// What each operation's dispatches may compute (`DispatchPart::name`): fused, or split into
/// reductions, a finalize and an elementwise pass.
fn allowed_parts(op: &str) -> &'static [&'static str] {
    match op {
        "train-forward" => &[
            "fused statistics and normalize",
            "statistics partials",
            "statistics finalize",
            "normalize",
        ],
        "eval-forward" => &["normalize"],
        _ => &[
            "fused gradient sums and dx",
            "gradient sums partials",
            "gradient sums finalize",
            "dx",
        ],
    }
}

/// A short run of `shape` in both layouts, all three operations, with `extra` options; returns
/// the JSON's one run and the Markdown.
fn short_run(shape: &str, extra: &[&str]) -> (Value, String) {
    let dir = scratch_dir();
    let json = dir.path().join("b.json").to_string_lossy().into_owned();
    let markdown = dir.path().join("b.md").to_string_lossy().into_owned();
    let mut args = vec![
        "bnbench",
        "--shape",
        shape,
        "--reps",
        "3",
        "--warmup",
        "1",
        "--warmup-ms",
        "0",
        "--rotate-mib",
        "1",
        "--json",
        &json,
        "--markdown",
        &markdown,
    ];
    args.extend(extra);
    let cli = bnbench::cli::Cli::try_parse_from(args).expect("a valid command line");
    let report = bnbench::run(&cli).expect("a run").expect("a report");
    assert_eq!(report.failures(), 0);
    let root: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let markdown = std::fs::read_to_string(&markdown).unwrap();
    (root["runs"][0].clone(), markdown)
}

/// A short run with `options` (one warm-up, no warm-up time, inputs rotating over 1 MiB) whose
/// every case passed its check: its report, and the JSON it wrote.
fn run_to_json(options: &[&str]) -> (bnbench::report::Report, Value) {
    let dir = scratch_dir();
    let json = dir.path().join("run.json").to_string_lossy().into_owned();
    let mut args = vec!["bnbench"];
    args.extend(options);
    args.extend(["--warmup", "1", "--warmup-ms", "0", "--rotate-mib", "1"]);
    args.extend(["--json", &json]);
    let cli = bnbench::cli::Cli::try_parse_from(args).expect("a valid command line");
    let report = bnbench::run(&cli).expect("a run").expect("a report");
    assert_eq!(report.failures(), 0);
    let root = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (report, root)
}

#[test]
fn breakdown_times_each_dispatch_by_name() {
    // Measured wherever the library's context has timestamps inside passes (which it takes
    // wherever the adapter offers them: tests/dispatch_timestamps.rs).
    let measurable = wgpu_batchnorm::GpuContext::new()
        .expect("an adapter")
        .has_timestamps_inside_passes();
    // A tiny shape (one fused dispatch where the plan allows) and one with more values per
    // channel.
    for shape in ["4,6,5,5", "16,8,64,64"] {
        let (run, markdown) = short_run(shape, &["--breakdown"]);
        let cases = run["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), 6, "three operations in two layouts");
        assert_eq!(
            run["breakdown"] == "measured",
            measurable,
            "{}",
            run["breakdown"]
        );
        if run["breakdown"] != "measured" {
            // Not measured: the run says why, and no case has numbers.
            let reason = run["breakdown"]["unavailable"]["reason"]
                .as_str()
                .unwrap_or_else(|| panic!("a status: {}", run["breakdown"]));
            assert!(
                reason.contains("TIMESTAMP_QUERY_INSIDE_PASSES")
                    || reason.contains("no GPU timestamps")
            );
            assert!(cases.iter().all(|c| c.get("breakdown").is_none()));
            assert!(markdown.contains("NOT MEASURED"), "{markdown}");
            continue;
        }
        assert!(markdown.contains("### Per dispatch"), "{markdown}");
        assert!(markdown.contains("need not sum"), "{markdown}");
        for case in cases {
            positive(case, "gpu_back_to_back_us");
            let breakdown = &case["breakdown"];
            positive(breakdown, "pass_median_us");
            let dispatches = breakdown["dispatches"].as_array().expect("dispatches");
            assert!(!dispatches.is_empty(), "no dispatch in {case}");
            let op = case["op"].as_str().unwrap();
            for dispatch in dispatches {
                let part = dispatch["part"].as_str().expect("a part");
                assert!(allowed_parts(op).contains(&part), "{part} in {op}");
                assert!(!dispatch["entry"].as_str().unwrap_or("").is_empty());
                assert!(dispatch["workgroups"].as_u64().unwrap_or(0) > 0);
                positive(dispatch, "gpu_median_us");
                assert!(
                    markdown.contains(&format!("| {} |", dispatch["entry"].as_str().unwrap())),
                    "the Markdown does not name {dispatch}"
                );
            }
            // Whatever the plan, a training forward computes statistics and writes y, a
            // backward computes the gradient sums and writes dx.
            let parts: Vec<&str> = dispatches
                .iter()
                .map(|d| d["part"].as_str().unwrap())
                .collect();
            let writes_output = parts
                .iter()
                .any(|p| p.starts_with("fused") || *p == "normalize" || *p == "dx");
            assert!(writes_output, "{op}: {parts:?}");
        }
    }
}

#[test]
fn breakdown_without_timestamps_says_so() {
    let (run, markdown) = short_run(
        "4,6,5,5",
        &["--breakdown", "--wall-clock", "--op", "backward"],
    );
    let reason = run["breakdown"]["unavailable"]["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("a status: {}", run["breakdown"]));
    assert!(reason.contains("no GPU timestamps"), "{reason}");
    for case in run["cases"].as_array().expect("cases") {
        assert!(case.get("breakdown").is_none(), "numbers in {case}");
        positive(case, "gpu_back_to_back_us");
    }
    assert!(markdown.contains("NOT MEASURED"), "{markdown}");
    assert!(markdown.contains("WALL time"), "{markdown}");
}

/// `--no-back-to-back` leaves out the GPU back-to-back column, says so in the heading, and
/// keeps every other column.
#[test]
fn no_back_to_back_leaves_out_that_column_only() {
    let (run, markdown) = short_run("4,6,5,5", &["--no-back-to-back", "--op", "train-forward"]);
    let cases = run["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 2, "one operation in two layouts");
    for case in cases {
        assert!(
            case.get("gpu_back_to_back_us").is_none(),
            "measured in {case}"
        );
        for key in ["gpu_median_us", "host_back_to_back_us", "host_single_us"] {
            positive(case, key);
        }
    }
    assert!(
        markdown.contains("GPU b2b: not measured (--no-back-to-back)"),
        "{markdown}"
    );
    for format in ["NCHW", "NHWC"] {
        let row = markdown
            .lines()
            .find(|line| line.starts_with(&format!("| train-forward 4x6x5x5 {format} |")))
            .unwrap_or_else(|| panic!("no {format} row in {markdown}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // "| case | GPU median us | GPU min us | GPU b2b us | ...": cells[4] is the column.
        assert_eq!(cells[4], "-", "{row}");
    }
}

#[test]
fn bad_shapes_are_refused_with_a_message() {
    for shape in ["64", "0,3", "1,8", "2,x,4"] {
        let error = bnbench::cli::Cli::try_parse_from(["bnbench", "--shape", shape])
            .expect_err("an invalid shape");
        assert!(error.to_string().contains(shape), "{error}");
    }
}

#[test]
fn compare_shaders_runs_both_sides_every_round() {
    let shaders = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let args = [
        "bnbench",
        "--shape",
        "4,8,6,6",
        "--op",
        "train-forward",
        "--reps",
        "2",
        "--warmup",
        "1",
        "--warmup-ms",
        "0",
        "--rotate-mib",
        "1",
        "--no-back-to-back",
    ];
    let with = |extra: &[&str]| {
        let cli = bnbench::cli::Cli::try_parse_from(args.iter().chain(extra))
            .expect("a valid command line");
        bnbench::run(&cli)
    };
    let mut report = with(&["--compare-shaders", shaders, "--rounds", "2"])
        .expect("a run")
        .expect("a report");
    assert_eq!(report.failures(), 0);
    // Two rounds, each running both layouts' case on the built-in kernels and on the
    // directory's, a run a case; the stream kernel measured once before them all and once
    // after, for all of them.
    assert_eq!(report.runs.len(), 8);
    let first = &report.runs[0];
    assert_eq!(first.stream_measurements_gbps.len(), 2, "before and after");
    for run in &report.runs {
        assert_eq!(run.cases.len(), 1, "{:?}", run.skipped);
        assert_eq!(
            serde_json::to_value(&run.stream).unwrap(),
            serde_json::to_value(&first.stream).unwrap(),
            "one stream measurement for all runs"
        );
        assert_eq!(run.stream_measurements_gbps, first.stream_measurements_gbps);
    }
    // A faster later measurement becomes every case's roofline.
    let run = &mut report.runs[0];
    let (percent, mut faster) = (run.cases[0].percent_of_stream, run.stream.clone());
    faster.gbps *= 2.0;
    run.take_faster_stream(&faster);
    assert_eq!(run.stream.gbps, faster.gbps);
    assert_eq!(run.stream_measurements_gbps.len(), 3);
    assert!((run.cases[0].percent_of_stream - percent / 2.0).abs() <= 1e-9 * percent);

    let broken = scratch_dir();
    let Err(error) = with(&[
        "--compare-shaders",
        broken.path().join("absent").to_str().unwrap(),
    ]) else {
        panic!("a directory that does not exist is refused");
    };
    assert!(error.to_string().contains("not a directory"), "{error}");
    // An empty directory: the directory's side cannot build a kernel, and each case counts as
    // one failure, however many rounds failed it.
    let report = with(&[
        "--compare-shaders",
        broken.path().to_str().unwrap(),
        "--rounds",
        "2",
    ])
    .expect("a run")
    .expect("a report");
    let failed_runs: usize = report.runs.iter().map(|run| run.skipped.len()).sum();
    assert_eq!(
        failed_runs, 4,
        "both cases, in both rounds of the directory's side"
    );
    assert_eq!(report.failures(), 2, "both cases, once each");
}

/// Each input copy's median is reported where every copy ran `MIN_RUNS_PER_COPY` times, and
/// the case's median lies between them (the median of a union lies between its parts').
#[test]
fn each_input_copy_gets_its_median_where_it_ran_enough() {
    // 2x8x96x96 f32 is 576 KiB: two copies fill the 1 MiB rotation of a forward.
    for (reps, reported) in [("6", true), ("5", false)] {
        let (_, root) = run_to_json(&[
            "--shape",
            "2,8,96,96",
            "--op",
            "eval-forward",
            "--layout",
            "channels-first",
            "--reps",
            reps,
            "--no-back-to-back",
        ]);
        let case = &root["runs"][0]["cases"][0];
        assert_eq!(case["copies"].as_u64(), Some(2), "{case}");
        let Some(medians) = case.get("gpu_copy_medians_us") else {
            assert!(!reported, "no copy medians after {reps} runs: {case}");
            continue;
        };
        assert!(reported, "copy medians after only {reps} runs: {case}");
        let medians = numbers(medians, "the copies' medians");
        assert_eq!(medians.len(), 2, "{case}");
        assert!(medians.iter().all(|&us| us.is_finite() && us > 0.0));
        let median = positive(case, "gpu_median_us");
        let (low, high) = (medians[0].min(medians[1]), medians[0].max(medians[1]));
        assert!(
            low <= median && median <= high,
            "{median} outside {medians:?}"
        );
    }
}

#[test]
fn copy_medians_take_every_copies_th_run() {
    use bnbench::timing::copy_medians;
    // Runs alternate copies 0, 1, 0, 1, ...: copy 0 ran 1, 2, 3 and copy 1 ran 5, 6, 7.
    let seconds = [1.0, 5.0, 3.0, 7.0, 2.0, 6.0];
    assert_eq!(copy_medians(&seconds, 2), Some(vec![2.0, 6.0]));
    // Three copies of six runs: two runs each, too few for a median of their own.
    assert_eq!(copy_medians(&seconds, 3), None);
    // One copy: the case's own median says it all.
    assert_eq!(copy_medians(&seconds, 1), None);
}

#[test]
fn copies_are_noted_from_a_fifth_apart() {
    use bnbench::report::copy_spread_line;
    use bnbench::timing::{noted_copy_spread, CopySpread};
    // performance.md section 50's first process: copy 0 at 27.0 ms, copy 1 at 21.8.
    let spread = noted_copy_spread(&[27.0, 21.8]).expect("1.24x is noted");
    assert_eq!(
        spread,
        CopySpread {
            fastest: (1, 21.8),
            slowest: (0, 27.0)
        }
    );
    // The Vulkan suite's 64x2048x7x7 channels-last inference there: 1.13x, not noted.
    assert_eq!(
        noted_copy_spread(&[4.11, 3.88, 3.88, 4.14, 3.68, 3.86]),
        None
    );
    assert_eq!(
        noted_copy_spread(&[10.0, 12.0]).map(|s| s.ratio()),
        Some(1.2)
    );
    // No time, or no copies: nothing to compare.
    assert_eq!(noted_copy_spread(&[0.0, 12.0]), None);
    assert_eq!(noted_copy_spread(&[]), None);
    // The report's line names both copies, their medians and the ratio.
    let line = copy_spread_line("backward 64x2048x7x7 NHWC", &[12856.0, 13109.0, 10411.0])
        .expect("1.26x is noted");
    for part in [
        "backward 64x2048x7x7 NHWC",
        "copy 1's median 13109 us",
        "copy 2's 10411 us",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
    assert!(line.contains("(1.26x, 3 copies)"), "{line}");
    assert_eq!(copy_spread_line("a case", &[100.0, 110.0]), None);
}
