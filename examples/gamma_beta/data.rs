//! The digits data set (`data/digits.csv.gz`, see `data/README.md`): checked against its
//! SHA-256, parsed, pixels scaled to [0, 1], and split once, the same way every run.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use sha2::{Digest, Sha256};

/// SHA-256 of scikit-learn 1.9.1's `sklearn/datasets/data/digits.csv.gz`.
pub const DIGITS_SHA256: &str = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22";
/// Images in the file.
pub const IMAGES: usize = 1797;
/// Pixels per image (8 x 8).
pub const PIXELS: usize = 64;
/// Digits 0 to 9.
pub const CLASSES: usize = 10;
/// Test images, about: each class gives the same share of its images.
pub const TEST_IMAGES: usize = 500;

const ORIGIN: &str = "it ships with this repository as data/digits.csv.gz, a copy of \
    scikit-learn 1.9.1's sklearn/datasets/data/digits.csv.gz (pip download scikit-learn==1.9.1 \
    --no-deps, then unzip that one file from the wheel); see data/README.md";

/// Why the data could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file cannot be read.
    #[error("cannot read the digits data at {path}: {source}; {ORIGIN}")]
    Unreadable {
        /// Where it was looked for.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the one the experiment is defined on.
    #[error(
        "{path} is not the digits data the experiment uses: its SHA-256 is {actual}, not \
         {DIGITS_SHA256} (a truncated or different file); {ORIGIN}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Its SHA-256.
        actual: String,
    },
    /// The gzip stream or its text is damaged.
    #[error("{path}: not a gzip-compressed text file: {source}; {ORIGIN}")]
    Gzip {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A row is not 64 pixels in 0..=16 and a label in 0..=9.
    #[error("line {line}: {reason}")]
    Row {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file does not hold 1797 images.
    #[error("the data holds {rows} images, not {IMAGES}")]
    Count {
        /// Rows found.
        rows: usize,
    },
}

/// Images (one row of 64 pixels in [0, 1] each) and their labels.
#[derive(Clone, Debug)]
pub struct Digits {
    /// `[images, 64]`.
    pub images: Array2<f32>,
    /// 0 to 9.
    pub labels: Vec<usize>,
}

/// The fixed training and test sets.
#[derive(Clone, Debug)]
pub struct Split {
    /// About 1300 images.
    pub train: Digits,
    /// About 500 images.
    pub test: Digits,
}

/// Reads, checks and parses the file at `path`.
pub fn load(path: &Path) -> Result<Digits, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let actual: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if actual != DIGITS_SHA256 {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            actual,
        });
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
        .map_err(|source| DataError::Gzip {
            path: path.to_path_buf(),
            source,
        })?;
    parse(&text)
}

/// Parses the CSV text: 64 pixels (0 to 16) and a label (0 to 9) per line, no header.
pub fn parse(text: &str) -> Result<Digits, DataError> {
    let mut pixels = Vec::with_capacity(IMAGES * PIXELS);
    let mut labels = Vec::with_capacity(IMAGES);
    for (index, line) in text.lines().enumerate() {
        let row_error = |reason: String| DataError::Row {
            line: index + 1,
            reason,
        };
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() != PIXELS + 1 {
            return Err(row_error(format!(
                "{} fields, not {} (64 pixels and a label)",
                fields.len(),
                PIXELS + 1
            )));
        }
        for field in &fields[..PIXELS] {
            match field.trim().parse::<f32>() {
                Ok(value) if (0.0..=16.0).contains(&value) => pixels.push(value / 16.0),
                _ => {
                    return Err(row_error(format!(
                        "pixel '{field}' is not a number in 0..=16"
                    )))
                }
            }
        }
        let label = fields[PIXELS].trim();
        match label.parse::<f32>() {
            Ok(value) if value.fract() == 0.0 && (0.0..CLASSES as f32).contains(&value) => {
                labels.push(value as usize)
            }
            _ => return Err(row_error(format!("label '{label}' is not a digit 0 to 9"))),
        }
    }
    if labels.len() != IMAGES {
        return Err(DataError::Count { rows: labels.len() });
    }
    let images = Array2::from_shape_vec((labels.len(), PIXELS), pixels)
        .expect("64 pixels were pushed per label");
    Ok(Digits { images, labels })
}

/// The stratified split: within each class, in file order, test images are spread evenly
/// (the i-th image of a class of n goes to the test set when floor((i + 1) t / n) passes an
/// integer, t = round(n 500 / 1797)). No randomness: every run has the same sets.
pub fn split(digits: &Digits) -> Split {
    let mut test_rows = Vec::new();
    let mut train_rows = Vec::new();
    for class in 0..CLASSES {
        let rows: Vec<usize> = (0..digits.labels.len())
            .filter(|&r| digits.labels[r] == class)
            .collect();
        let n = rows.len();
        let take = (n * TEST_IMAGES + IMAGES / 2) / IMAGES;
        for (i, &row) in rows.iter().enumerate() {
            if (i + 1) * take / n > i * take / n {
                test_rows.push(row);
            } else {
                train_rows.push(row);
            }
        }
    }
    test_rows.sort_unstable();
    train_rows.sort_unstable();
    let subset = |rows: &[usize]| Digits {
        images: digits.images.select(ndarray::Axis(0), rows),
        labels: rows.iter().map(|&r| digits.labels[r]).collect(),
    };
    Split {
        train: subset(&train_rows),
        test: subset(&test_rows),
    }
}
