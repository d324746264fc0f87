//! A measured model as a text file: what `tutti probe` writes, `tutti model --from FILE` reads and
//! a communicator pins with `TUTTI_TUNE=FILE`.
//!
//! ```text
//! # tutti model 1            (the first line; other lines starting with '#' are comments)
//! alpha_s 1.19e-6            seconds per message
//! beta_s_per_byte 1.05e-10   seconds per byte sent
//! gamma_s_per_byte 9.8e-11   seconds per byte reduced (the f32 sum)
//! gamma_s_per_byte.bf16 1.1e-9
//! ```
//! One `key value` pair a line, in any order; the three base keys are required, the per-dtype
//! reduction speeds (`gamma_s_per_byte.<dtype>`) optional, an unknown key an error (a typo must
//! not silently fall back to a default).

use super::Model;
use crate::dtype::DType;

/// The first line of a model file.
pub const HEADER: &str = "# tutti model 1";

/// A link model with the reduction speed of each dtype measured apart.
///
/// Invariant: every value is finite and non-negative.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Latency and bandwidth, and the reduction speed of the dtypes without their own.
    pub model: Model,
    /// Seconds per byte reduced, per dtype (sum), where measured.
    pub gamma_by_dtype: Vec<(DType, f64)>,
}

/// A model file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model file, line {line}: {what}")]
pub struct ModelFileError {
    pub line: usize,
    pub what: String,
}

impl Tuning {
    /// The model without per-dtype reduction speeds.
    pub fn of(model: Model) -> Tuning {
        Tuning {
            model,
            gamma_by_dtype: Vec::new(),
        }
    }

    /// The model of a call on `dtype`: its own reduction speed if measured.
    pub fn for_dtype(&self, dtype: Option<DType>) -> Model {
        let gamma = dtype.and_then(|d| {
            self.gamma_by_dtype
                .iter()
                .find(|(x, _)| *x == d)
                .map(|&(_, g)| g)
        });
        Model {
            gamma_s_per_byte: gamma.unwrap_or(self.model.gamma_s_per_byte),
            ..self.model
        }
    }

    /// The file text, with `comment` lines (each prefixed `# `) after the header.
    pub fn to_text(&self, comment: &[String]) -> String {
        let mut s = format!("{HEADER}\n");
        for c in comment {
            s.push_str(&format!("# {c}\n"));
        }
        let m = &self.model;
        s.push_str(&format!("alpha_s {:e}\n", m.alpha_s));
        s.push_str(&format!("beta_s_per_byte {:e}\n", m.beta_s_per_byte));
        s.push_str(&format!("gamma_s_per_byte {:e}\n", m.gamma_s_per_byte));
        for (d, g) in &self.gamma_by_dtype {
            s.push_str(&format!("gamma_s_per_byte.{} {g:e}\n", d.name()));
        }
        s
    }

    /// Parses a file written by [`to_text`](Tuning::to_text) (or by hand).
    pub fn parse(text: &str) -> Result<Tuning, ModelFileError> {
        let err = |line: usize, what: String| ModelFileError { line, what };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, first)) if first.trim() == HEADER => {}
            _ => return Err(err(1, format!("the first line must be {HEADER:?}"))),
        }
        let (mut alpha, mut beta, mut gamma) = (None, None, None);
        let mut by_dtype = Vec::new();
        for (i, raw) in lines {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| err(i + 1, format!("{line:?} is not `key value`")))?;
            let v: f64 = value
                .trim()
                .parse()
                .map_err(|_| err(i + 1, format!("{value:?} is not a number")))?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(err(
                    i + 1,
                    format!("{key} must be finite and >= 0, not {v}"),
                ));
            }
            match key {
                "alpha_s" => alpha = Some(v),
                "beta_s_per_byte" => beta = Some(v),
                "gamma_s_per_byte" => gamma = Some(v),
                _ => match key.strip_prefix("gamma_s_per_byte.").map(DType::parse) {
                    Some(Some(d)) => by_dtype.push((d, v)),
                    _ => return Err(err(i + 1, format!("unknown key {key:?}"))),
                },
            }
        }
        let need = |v: Option<f64>, k: &str| v.ok_or_else(|| err(0, format!("{k} is missing")));
        Ok(Tuning {
            model: Model {
                alpha_s: need(alpha, "alpha_s")?,
                beta_s_per_byte: need(beta, "beta_s_per_byte")?,
                gamma_s_per_byte: need(gamma, "gamma_s_per_byte")?,
            },
            gamma_by_dtype: by_dtype,
        })
    }

    /// Every value rounded to the nearest power of `2^(1/2)`, so that measurements a little
    /// apart give the same model (and so the same choices) run after run. The relative error
    /// of a rounded value is at most 19%.
    pub fn bucketed(&self) -> Tuning {
        Tuning {
            model: Model {
                alpha_s: bucket(self.model.alpha_s),
                beta_s_per_byte: bucket(self.model.beta_s_per_byte),
                gamma_s_per_byte: bucket(self.model.gamma_s_per_byte),
            },
            gamma_by_dtype: self
                .gamma_by_dtype
                .iter()
                .map(|&(d, g)| (d, bucket(g)))
                .collect(),
        }
    }
}

/// `x` rounded to the nearest half-octave (`2^(k/2)`); zero stays zero.
pub fn bucket(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return x.max(0.0);
    }
    let k = (2.0 * x.log2()).round();
    (k / 2.0).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_file_round_trips_and_typos_are_errors() {
        let t = Tuning {
            model: Model::link(1.5e-6, 1.25e-10),
            gamma_by_dtype: vec![(DType::BF16, 1.1e-9), (DType::F64, 5e-11)],
        };
        let text = t.to_text(&["measured by a test".into()]);
        assert!(text.starts_with(HEADER), "{text}");
        assert_eq!(Tuning::parse(&text).unwrap(), t);
        assert_eq!(t.for_dtype(Some(DType::BF16)).gamma_s_per_byte, 1.1e-9);
        assert_eq!(
            t.for_dtype(Some(DType::I32)).gamma_s_per_byte,
            t.model.gamma_s_per_byte
        );
        let typo = text.replace("beta_s_per_byte", "beta_per_byte");
        let e = Tuning::parse(&typo).unwrap_err();
        assert!(e.what.contains("beta_per_byte"), "{e}");
        assert!(Tuning::parse("alpha_s 1\n").is_err());
        let missing = format!("{HEADER}\nalpha_s 1e-6\nbeta_s_per_byte 1e-9\n");
        assert!(Tuning::parse(&missing)
            .unwrap_err()
            .what
            .contains("gamma_s_per_byte"));
        let negative = format!("{HEADER}\nalpha_s -1\n");
        assert!(Tuning::parse(&negative).is_err());
    }

    #[test]
    fn buckets_are_half_octaves_and_absorb_small_differences() {
        assert_eq!(bucket(1.0), 1.0);
        assert_eq!(bucket(2.0), 2.0);
        assert!((bucket(1.4) - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(bucket(1.05e-6), bucket(1.1e-6));
        assert_eq!(bucket(0.0), 0.0);
        for x in [3e-9, 7e-6, 0.02, 123.0] {
            let b = bucket(x);
            assert!((b / x - 1.0).abs() <= 0.19, "{x} -> {b}");
        }
    }
}
