//! The data: the UCI handwritten digits (1,797 8x8 images, 10 classes) as shipped by scikit-learn,
//! plus the deterministic batch order every rank agrees on.
//!
//! The gzip'd CSV lives in `data/digits.csv.gz` (origin and license in `data/README.md`) and is
//! embedded into the binary, so `dp_train` runs from any directory. Each line holds 64 pixel
//! counts in 0..=16 and a label in 0..=9; [`parse_csv`] checks every field and names the line of
//! the first bad one. Pixels are divided by 16, so features lie in [0, 1].
//!
//! Batch order ([`BatchPlan`]): each epoch is a Fisher-Yates shuffle of the training indices,
//! driven by a [`SplitMix64`] seeded from `(seed, epoch)`. Every rank computes the same order from
//! the shared seed, so no indices travel over the network; the tail that does not fill a whole
//! global batch is dropped, so every step sees exactly `batch` samples.

use flate2::read::GzDecoder;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::Path;

/// Pixels per image (8x8).
pub const FEATURES: usize = 64;
/// Classes (the digits 0..=9).
pub const CLASSES: usize = 10;
/// The largest pixel count in the raw data; features are divided by it.
pub const PIXEL_MAX: f32 = 16.0;
/// Samples kept aside for the test set (the last ones of the file).
pub const DEFAULT_TEST_LEN: usize = 297;

/// The shipped data set, gzip'd CSV.
pub const EMBEDDED_DIGITS: &[u8] = include_bytes!("../data/digits.csv.gz");

/// What can go wrong loading the data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {source_name}: {err}")]
    Io {
        source_name: String,
        #[source]
        err: std::io::Error,
    },
    #[error("{source_name}, line {line}: {what}")]
    Parse {
        source_name: String,
        line: usize,
        what: String,
    },
    #[error("{source_name}: no samples")]
    Empty { source_name: String },
    #[error("cannot keep {test_len} test samples out of {len}: the training set would be empty")]
    Split { len: usize, test_len: usize },
}

/// Labelled samples. Invariant: `features.len() == labels.len() * FEATURES`, every feature in
/// [0, 1], every label `< CLASSES`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    features: Vec<f32>,
    labels: Vec<u8>,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The `FEATURES` features of sample `i`. Panics if `i >= len()` (an index bug, not input).
    pub fn features(&self, i: usize) -> &[f32] {
        &self.features[i * FEATURES..(i + 1) * FEATURES]
    }

    /// The label of sample `i`, in `0..CLASSES`.
    pub fn label(&self, i: usize) -> usize {
        usize::from(self.labels[i])
    }

    /// Splits off the last `test_len` samples: `(train, test)`. Deterministic (no shuffle): the
    /// file is already interleaved by class, so both halves hold every class.
    pub fn split_tail(mut self, test_len: usize) -> Result<(Dataset, Dataset), DataError> {
        let len = self.len();
        if test_len >= len {
            return Err(DataError::Split { len, test_len });
        }
        let cut = len - test_len;
        let test = Dataset {
            features: self.features.split_off(cut * FEATURES),
            labels: self.labels.split_off(cut),
        };
        Ok((self, test))
    }

    /// How many samples of each class.
    #[cfg(test)]
    pub fn class_counts(&self) -> [usize; CLASSES] {
        let mut counts = [0; CLASSES];
        for &label in &self.labels {
            counts[usize::from(label)] += 1;
        }
        counts
    }
}

/// Loads the data set embedded in the binary.
pub fn load_embedded() -> Result<Dataset, DataError> {
    load_gzip(EMBEDDED_DIGITS, "embedded digits.csv.gz")
}

/// Loads a gzip'd digits CSV from a file.
pub fn load_path(path: &Path) -> Result<Dataset, DataError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|err| DataError::Io {
        source_name: name.clone(),
        err,
    })?;
    load_gzip(file, &name)
}

/// Decompresses and parses a gzip'd digits CSV; `source_name` appears in errors.
pub fn load_gzip(reader: impl Read, source_name: &str) -> Result<Dataset, DataError> {
    parse_csv(BufReader::new(GzDecoder::new(reader)), source_name)
}

/// Parses digits CSV text: per line 64 integers 0..=16 then a label 0..=9. Blank lines are
/// skipped; anything else that does not fit is an error naming its (1-based) line.
pub fn parse_csv(reader: impl BufRead, source_name: &str) -> Result<Dataset, DataError> {
    let mut data = Dataset {
        features: Vec::new(),
        labels: Vec::new(),
    };
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|err| DataError::Io {
            source_name: source_name.to_owned(),
            err,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        parse_line(&line, &mut data).map_err(|what| DataError::Parse {
            source_name: source_name.to_owned(),
            line: index + 1,
            what,
        })?;
    }
    if data.is_empty() {
        return Err(DataError::Empty {
            source_name: source_name.to_owned(),
        });
    }
    Ok(data)
}

/// Appends one CSV line to `data`, or says what is wrong with it (leaving `data` unchanged).
fn parse_line(line: &str, data: &mut Dataset) -> Result<(), String> {
    let fields: Vec<&str> = line.trim().split(',').collect();
    if fields.len() != FEATURES + 1 {
        return Err(format!(
            "expected {} comma-separated fields (64 pixels + label), found {}",
            FEATURES + 1,
            fields.len()
        ));
    }
    let mut pixels = [0f32; FEATURES];
    for (column, (field, pixel)) in fields.iter().zip(pixels.iter_mut()).enumerate() {
        let count = parse_int(field, PIXEL_MAX as u32)
            .map_err(|why| format!("pixel column {}: {why}", column + 1))?;
        *pixel = count as f32 / PIXEL_MAX;
    }
    let label = parse_int(fields[FEATURES], CLASSES as u32 - 1)
        .map_err(|why| format!("label column {}: {why}", FEATURES + 1))?;
    data.features.extend_from_slice(&pixels);
    data.labels.push(label as u8);
    Ok(())
}

/// Parses an integer in `0..=max`. Accepts "3" and "3.0" (some exports write floats), rejects
/// fractions, negatives and anything else.
fn parse_int(field: &str, max: u32) -> Result<u32, String> {
    let field = field.trim();
    let value: f64 = field
        .parse()
        .map_err(|_| format!("{field:?} is not a number"))?;
    if value.fract() != 0.0 || !(0.0..=f64::from(max)).contains(&value) {
        return Err(format!("{field:?} is not an integer in 0..={max}"));
    }
    Ok(value as u32)
}

/// The deterministic order in which training samples form global batches.
///
/// Invariants: `batch >= 1` and `steps_per_epoch() >= 1` (checked by [`BatchPlan::new`]); step
/// `s` of the run is step `s % steps_per_epoch` of epoch `s / steps_per_epoch`.
#[derive(Clone, Debug)]
pub struct BatchPlan {
    len: usize,
    batch: usize,
    seed: u64,
}

impl BatchPlan {
    /// A plan over `len` samples in global batches of `batch`. Errors if not even one batch fits.
    pub fn new(len: usize, batch: usize, seed: u64) -> Result<BatchPlan, String> {
        if batch == 0 {
            return Err("the global batch must hold at least one sample".into());
        }
        if batch > len {
            return Err(format!(
                "the global batch ({batch}) is larger than the training set ({len} samples)"
            ));
        }
        Ok(BatchPlan { len, batch, seed })
    }

    /// Whole global batches per epoch (the remainder of the shuffled epoch is dropped).
    pub fn steps_per_epoch(&self) -> usize {
        self.len / self.batch
    }

    /// The shuffled sample indices of `epoch`: a permutation of `0..len`, the same on every rank.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        // Mix the epoch into the seed so consecutive epochs are unrelated streams.
        let mut rng = SplitMix64::new(self.seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03));
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        order
    }

    /// Positions (into an epoch order) of the global batch of `step_in_epoch`.
    pub fn batch_range(&self, step_in_epoch: usize) -> Range<usize> {
        step_in_epoch * self.batch..(step_in_epoch + 1) * self.batch
    }
}

/// The part of a global batch of `batch` samples that `rank` of `world` computes:
/// `[rank * batch / world, (rank + 1) * batch / world)`. Requires `batch % world == 0`.
pub fn rank_slice(batch: usize, rank: usize, world: usize) -> Range<usize> {
    let per_rank = batch / world;
    rank * per_rank..(rank + 1) * per_rank
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, well-mixed 64-bit generator; one `u64` of
/// state, so a seed fully determines the stream on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 24 bits (exactly representable in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `0..bound` (`bound >= 1`), by Lemire's multiply-shift; the bias is below
    /// `bound / 2^64`, negligible for shuffles of a few thousand items.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_digits_have_the_documented_shape() {
        let data = load_embedded().unwrap();
        assert_eq!(data.len(), 1797);
        let counts = data.class_counts();
        assert!(
            counts.iter().all(|&c| (170..=185).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(counts.iter().sum::<usize>(), 1797);
        let all: Vec<f32> = (0..data.len())
            .flat_map(|i| data.features(i).to_vec())
            .collect();
        assert!(all.iter().all(|&x| (0.0..=1.0).contains(&x)));
        assert!(all.contains(&1.0), "some pixel is saturated (16/16)");
        // The first image of the file is a zero; its first row is 0,0,5,13,9,1,0,0.
        assert_eq!(data.label(0), 0);
        assert_eq!(data.features(0)[2], 5.0 / 16.0);
        assert_eq!(data.features(0)[3], 13.0 / 16.0);
    }

    #[test]
    fn split_keeps_the_tail_as_test() {
        let data = load_embedded().unwrap();
        let last = data.features(1796).to_vec();
        let (train, test) = data.split_tail(DEFAULT_TEST_LEN).unwrap();
        assert_eq!((train.len(), test.len()), (1500, 297));
        assert_eq!(test.features(296), &last[..]);
        assert!(test.class_counts().iter().all(|&c| c > 20));
        let small = parse_csv(format!("{}\n", line_with("0", "3")).as_bytes(), "t").unwrap();
        assert!(matches!(small.split_tail(1), Err(DataError::Split { .. })));
    }

    fn line_with(pixel: &str, label: &str) -> String {
        let mut fields = vec!["1"; FEATURES];
        fields[10] = pixel;
        fields.push(label);
        fields.join(",")
    }

    #[test]
    fn parse_accepts_good_lines_and_floats() {
        let text = format!("{}\n\n{}\n", line_with("16", "9"), line_with("4.0", "0"));
        let data = parse_csv(text.as_bytes(), "t").unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!((data.label(0), data.label(1)), (9, 0));
        assert_eq!(data.features(0)[10], 1.0);
        assert_eq!(data.features(1)[10], 0.25);
        assert_eq!(data.features(1)[0], 1.0 / 16.0);
    }

    #[test]
    fn parse_errors_name_the_line_and_column() {
        let cases = [
            (line_with("17", "1"), "pixel column 11"),
            (line_with("-1", "1"), "pixel column 11"),
            (line_with("2.5", "1"), "pixel column 11"),
            (line_with("x", "1"), "not a number"),
            (line_with("1", "10"), "label column 65"),
            ("1,2,3".to_owned(), "found 3"),
        ];
        for (bad, expected) in cases {
            let text = format!("{}\n{bad}\n", line_with("0", "0"));
            let err = parse_csv(text.as_bytes(), "x.csv").unwrap_err().to_string();
            assert!(err.starts_with("x.csv, line 2: "), "{err}");
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
        assert!(matches!(
            parse_csv(&b"\n"[..], "e"),
            Err(DataError::Empty { .. })
        ));
    }

    #[test]
    fn gzip_errors_are_reported() {
        let err = load_gzip(&b"not gzip"[..], "junk.gz").unwrap_err();
        assert!(err.to_string().starts_with("reading junk.gz"), "{err}");
        let err = load_path(Path::new("/nonexistent/digits.csv.gz")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/digits.csv.gz"));
    }

    #[test]
    fn epoch_orders_are_seeded_permutations() {
        let plan = BatchPlan::new(100, 10, 7).unwrap();
        let a = plan.epoch_order(0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_eq!(a, BatchPlan::new(100, 10, 7).unwrap().epoch_order(0));
        assert_ne!(a, plan.epoch_order(1));
        assert_ne!(a, BatchPlan::new(100, 10, 8).unwrap().epoch_order(0));
        assert_ne!(a, sorted, "shuffled");
    }

    #[test]
    fn batch_plan_checks_and_slices() {
        assert!(BatchPlan::new(10, 0, 0).is_err());
        assert!(BatchPlan::new(10, 11, 0).is_err());
        let plan = BatchPlan::new(1500, 64, 0).unwrap();
        assert_eq!(plan.steps_per_epoch(), 23);
        assert_eq!(plan.batch_range(2), 128..192);
        let slices: Vec<_> = (0..4).map(|r| rank_slice(64, r, 4)).collect();
        assert_eq!(slices, vec![0..16, 16..32, 32..48, 48..64]);
        assert_eq!(rank_slice(64, 0, 1), 0..64);
    }

    #[test]
    fn splitmix_is_uniform_enough() {
        let mut rng = SplitMix64::new(1);
        let xs: Vec<f32> = (0..10_000).map(|_| rng.next_f32()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let mut hits = [0; 5];
        for _ in 0..10_000 {
            hits[rng.below(5) as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (1800..2200).contains(&h)), "{hits:?}");
    }
}
