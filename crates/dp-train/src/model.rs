//! The model: a two-layer perceptron `inputs -> hidden (ReLU) -> outputs` with softmax
//! cross-entropy, forward and backward written out by hand in `f32`.
//!
//! All parameters live in ONE flat `Vec<f32>` so that the gradient is one buffer, reduced by one
//! all-reduce. Layout (row-major, `i` inputs, `h` hidden, `o` outputs):
//!
//! | range | tensor | shape |
//! | --- | --- | --- |
//! | `[0, h*i)` | `w1` | `h x i` |
//! | `[h*i, h*i + h)` | `b1` | `h` |
//! | next `o*h` | `w2` | `o x h` |
//! | last `o` | `b2` | `o` |
//!
//! For one sample `x` with label `y`:
//!
//! ```text
//! a = w1 x + b1,  r = relu(a),  z = w2 r + b2,  p = softmax(z),  loss = -ln p[y]
//! dz = p - onehot(y);  dw2 += dz r^T;  db2 += dz
//! dr = w2^T dz;  da = dr * [a > 0];  dw1 += da x^T;  db1 += da
//! ```
//!
//! Cost per sample: about `2(h*i + o*h)` flops forward and twice that backward. The loss uses
//! the log-sum-exp form (`ln sum e^(z - max z) + max z - z[y]`), which cannot overflow.

use crate::data::{Dataset, SplitMix64};

/// The shape of the perceptron. Invariant: every dimension is at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mlp {
    inputs: usize,
    hidden: usize,
    outputs: usize,
}

/// Loss and hit of one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleStats {
    /// Cross-entropy `-ln p[label]`, at least 0.
    pub loss: f32,
    /// Whether the arg-max of the logits is the label.
    pub correct: bool,
}

/// Summed loss and hits over some samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BatchStats {
    /// Sum of the per-sample losses (f64 so that long sums lose nothing visible).
    pub loss_sum: f64,
    /// Number of correctly classified samples.
    pub correct: usize,
}

/// Scratch buffers for one forward + backward pass, reused across samples so the hot loop does
/// not allocate.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// Hidden pre-activations `a`.
    pub(crate) pre: Vec<f32>,
    /// Hidden activations `r = relu(a)`.
    act: Vec<f32>,
    /// Logits `z`, then (in backward) `dz`.
    logits: Vec<f32>,
    /// `dr`, then `da`.
    dhidden: Vec<f32>,
}

/// Borrowed views of the four tensors inside a flat parameter (or gradient) buffer.
struct Tensors<T> {
    w1: T,
    b1: T,
    w2: T,
    b2: T,
}

impl Mlp {
    /// A perceptron of the given shape; errors if a dimension is 0.
    pub fn new(inputs: usize, hidden: usize, outputs: usize) -> Result<Mlp, String> {
        if inputs == 0 || hidden == 0 || outputs == 0 {
            return Err(format!(
                "every layer needs at least one unit (got {inputs} -> {hidden} -> {outputs})"
            ));
        }
        Ok(Mlp {
            inputs,
            hidden,
            outputs,
        })
    }

    /// Number of parameters: `h*i + h + o*h + o`.
    pub fn param_len(&self) -> usize {
        self.hidden * self.inputs + self.hidden + self.outputs * self.hidden + self.outputs
    }

    /// Deterministic Xavier/Glorot-uniform weights, `U(-a, a)` with `a = sqrt(6 / (fan_in +
    /// fan_out))`, and zero biases. The same seed gives the same bits on every rank.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut params = vec![0.0; self.param_len()];
        let mut rng = SplitMix64::new(seed);
        let t = self.split_mut(&mut params);
        xavier_uniform(t.w1, self.inputs, self.hidden, &mut rng);
        xavier_uniform(t.w2, self.hidden, self.outputs, &mut rng);
        params
    }

    /// Fresh scratch buffers for this shape.
    pub fn workspace(&self) -> Workspace {
        Workspace {
            pre: vec![0.0; self.hidden],
            act: vec![0.0; self.hidden],
            logits: vec![0.0; self.outputs],
            dhidden: vec![0.0; self.hidden],
        }
    }

    /// Forward pass; leaves `a`, `r` and `z` in `ws` and returns the loss for `label`.
    ///
    /// Requires `params.len() == param_len()`, `x.len() == inputs`, `label < outputs` (checked
    /// by debug assertions: they are invariants of the callers, not user input).
    pub fn forward(
        &self,
        params: &[f32],
        x: &[f32],
        label: usize,
        ws: &mut Workspace,
    ) -> SampleStats {
        debug_assert_eq!(params.len(), self.param_len());
        debug_assert_eq!(x.len(), self.inputs);
        debug_assert!(label < self.outputs);
        let t = self.split(params);
        affine(t.w1, t.b1, x, &mut ws.pre);
        for (r, &a) in ws.act.iter_mut().zip(&ws.pre) {
            *r = a.max(0.0);
        }
        affine(t.w2, t.b2, &ws.act, &mut ws.logits);
        let max = ws.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max + ws.logits.iter().map(|&z| (z - max).exp()).sum::<f32>().ln();
        SampleStats {
            loss: lse - ws.logits[label],
            correct: argmax(&ws.logits) == label,
        }
    }

    /// Forward and backward for one sample: ADDS its gradient into `grad` and returns its loss.
    pub fn accumulate_sample(
        &self,
        params: &[f32],
        x: &[f32],
        label: usize,
        grad: &mut [f32],
        ws: &mut Workspace,
    ) -> SampleStats {
        debug_assert_eq!(grad.len(), self.param_len());
        let stats = self.forward(params, x, label, ws);
        // dz = softmax(z) - onehot(label), in place; loss + z[label] is the log-sum-exp.
        let lse = stats.loss + ws.logits[label];
        for z in ws.logits.iter_mut() {
            *z = (*z - lse).exp();
        }
        ws.logits[label] -= 1.0;
        let t = self.split(params);
        let g = self.split_mut(grad);
        outer_add(g.w2, g.b2, &ws.logits, &ws.act);
        // dr = w2^T dz, then da = dr * [a > 0].
        ws.dhidden.fill(0.0);
        for (row, &dz) in t.w2.chunks_exact(self.hidden).zip(&ws.logits) {
            for (dr, &w) in ws.dhidden.iter_mut().zip(row) {
                *dr += w * dz;
            }
        }
        for (dr, &a) in ws.dhidden.iter_mut().zip(&ws.pre) {
            if a <= 0.0 {
                *dr = 0.0;
            }
        }
        outer_add(g.w1, g.b1, &ws.dhidden, x);
        stats
    }

    /// Overwrites `grad` with the SUM (not the mean) of the per-sample gradients over the samples
    /// `indices` of `data`, added in the order given; returns their summed loss and hits.
    pub fn sum_gradient(
        &self,
        params: &[f32],
        data: &Dataset,
        indices: &[usize],
        grad: &mut [f32],
        ws: &mut Workspace,
    ) -> BatchStats {
        grad.fill(0.0);
        let mut stats = BatchStats::default();
        for &i in indices {
            let s = self.accumulate_sample(params, data.features(i), data.label(i), grad, ws);
            stats.loss_sum += f64::from(s.loss);
            stats.correct += usize::from(s.correct);
        }
        stats
    }

    /// The gradient buckets of [`Mlp::sum_gradient_in_buckets`]: bucket 0 is the output layer
    /// (`w2` then `b2`), buckets `1..=blocks` the hidden layer's rows in `blocks` nearly equal
    /// runs (`w1`'s rows then the same entries of `b1`). Returns the hidden rows of each bucket
    /// after the first. `blocks` is at least 1 and at most `hidden`.
    pub fn bucket_rows(&self, blocks: usize) -> Vec<std::ops::Range<usize>> {
        let blocks = blocks.clamp(1, self.hidden);
        (0..blocks)
            .map(|k| k * self.hidden / blocks..(k + 1) * self.hidden / blocks)
            .collect()
    }

    /// As [`sum_gradient`](Mlp::sum_gradient), computed layer by layer as a backward pass runs,
    /// the output layer first, and handed over bucket by bucket as each is complete:
    /// `ready(k, bucket)` (bucket layout: [`Mlp::bucket_rows`]), so that each bucket's
    /// all-reduce can start while the next is computed. Every entry is the same sum, in the
    /// same sample order, as `sum_gradient`'s: the gradients are bit-identical.
    pub fn sum_gradient_in_buckets(
        &self,
        params: &[f32],
        data: &Dataset,
        indices: &[usize],
        blocks: usize,
        ws: &mut Workspace,
        mut ready: impl FnMut(usize, Vec<f32>),
    ) -> BatchStats {
        let (h, i, o) = (self.hidden, self.inputs, self.outputs);
        let t = self.split(params);
        let mut stats = BatchStats::default();
        // Pass 1, per sample: forward, the output layer's gradient, and `da` kept for pass 2.
        let mut out = vec![0.0f32; o * h + o];
        let mut da = vec![0.0f32; indices.len() * h];
        for (n, &s) in indices.iter().enumerate() {
            let x = data.features(s);
            let st = self.forward(params, x, data.label(s), ws);
            stats.loss_sum += f64::from(st.loss);
            stats.correct += usize::from(st.correct);
            let lse = st.loss + ws.logits[data.label(s)];
            for z in ws.logits.iter_mut() {
                *z = (*z - lse).exp();
            }
            ws.logits[data.label(s)] -= 1.0;
            let (dw2, db2) = out.split_at_mut(o * h);
            outer_add(dw2, db2, &ws.logits, &ws.act);
            let dan = &mut da[n * h..(n + 1) * h];
            dan.fill(0.0);
            for (row, &dz) in t.w2.chunks_exact(h).zip(&ws.logits) {
                for (dr, &w) in dan.iter_mut().zip(row) {
                    *dr += w * dz;
                }
            }
            for (dr, &a) in dan.iter_mut().zip(&ws.pre) {
                if a <= 0.0 {
                    *dr = 0.0;
                }
            }
        }
        ready(0, out);
        // Pass 2, per block of hidden rows: their slice of dw1 and db1.
        for (k, rows) in self.bucket_rows(blocks).into_iter().enumerate() {
            let r = rows.len();
            let mut bucket = vec![0.0f32; r * i + r];
            let (dw1, db1) = bucket.split_at_mut(r * i);
            for (n, &s) in indices.iter().enumerate() {
                let d = &da[n * h + rows.start..n * h + rows.end];
                outer_add(dw1, db1, d, data.features(s));
            }
            ready(k + 1, bucket);
        }
        stats
    }

    /// Writes bucket `k` (of [`Mlp::sum_gradient_in_buckets`] with `blocks`) into its place in
    /// the flat gradient `grad`.
    pub fn write_bucket(&self, blocks: usize, k: usize, bucket: &[f32], grad: &mut [f32]) {
        let (i, o, h) = (self.inputs, self.outputs, self.hidden);
        let g = self.split_mut(grad);
        if k == 0 {
            let (w2, b2) = bucket.split_at(o * h);
            g.w2.copy_from_slice(w2);
            g.b2.copy_from_slice(b2);
            return;
        }
        let Some(rows) = self.bucket_rows(blocks).get(k - 1).cloned() else {
            return;
        };
        let (w1, b1) = bucket.split_at(rows.len() * i);
        g.w1[rows.start * i..rows.end * i].copy_from_slice(w1);
        g.b1[rows.clone()].copy_from_slice(b1);
    }

    /// Fraction of `data` classified correctly (0 for an empty set).
    pub fn accuracy(&self, params: &[f32], data: &Dataset) -> f64 {
        if data.is_empty() {
            return 0.0;
        }
        let mut ws = self.workspace();
        let correct = (0..data.len())
            .filter(|&i| {
                self.forward(params, data.features(i), data.label(i), &mut ws)
                    .correct
            })
            .count();
        correct as f64 / data.len() as f64
    }

    fn split<'a>(&self, flat: &'a [f32]) -> Tensors<&'a [f32]> {
        let (w1, rest) = flat.split_at(self.hidden * self.inputs);
        let (b1, rest) = rest.split_at(self.hidden);
        let (w2, b2) = rest.split_at(self.outputs * self.hidden);
        Tensors { w1, b1, w2, b2 }
    }

    fn split_mut<'a>(&self, flat: &'a mut [f32]) -> Tensors<&'a mut [f32]> {
        let (w1, rest) = flat.split_at_mut(self.hidden * self.inputs);
        let (b1, rest) = rest.split_at_mut(self.hidden);
        let (w2, b2) = rest.split_at_mut(self.outputs * self.hidden);
        Tensors { w1, b1, w2, b2 }
    }
}

/// `out = w x + b` for a row-major `w` of `out.len()` rows and `x.len()` columns.
fn affine(w: &[f32], b: &[f32], x: &[f32], out: &mut [f32]) {
    for ((o, row), &bias) in out.iter_mut().zip(w.chunks_exact(x.len())).zip(b) {
        *o = bias + row.iter().zip(x).map(|(&w, &x)| w * x).sum::<f32>();
    }
}

/// `dw += d v^T`, `db += d` (the gradient of an affine layer with upstream `d` and input `v`).
fn outer_add(dw: &mut [f32], db: &mut [f32], d: &[f32], v: &[f32]) {
    for ((row, bias), &dk) in dw.chunks_exact_mut(v.len()).zip(db.iter_mut()).zip(d) {
        *bias += dk;
        for (w, &vj) in row.iter_mut().zip(v) {
            *w += dk * vj;
        }
    }
}

/// Index of the largest value (the first on ties).
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

fn xavier_uniform(w: &mut [f32], fan_in: usize, fan_out: usize, rng: &mut SplitMix64) {
    let a = (6.0 / (fan_in + fan_out) as f32).sqrt();
    for v in w.iter_mut() {
        *v = (2.0 * rng.next_f32() - 1.0) * a;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{load_embedded, CLASSES, FEATURES};

    fn small() -> (Mlp, Vec<f32>, Dataset) {
        let mlp = Mlp::new(FEATURES, 6, CLASSES).unwrap();
        let mut params = mlp.init(3);
        // Non-zero biases so their gradients are exercised away from the init.
        let n = params.len();
        for (k, p) in params[n - CLASSES..].iter_mut().enumerate() {
            *p = 0.1 * k as f32 - 0.4;
        }
        (mlp, params, load_embedded().unwrap())
    }

    fn batch_loss(mlp: &Mlp, params: &[f32], data: &Dataset, idx: &[usize]) -> (f64, Vec<bool>) {
        let mut ws = mlp.workspace();
        let mut loss = 0.0;
        let mut pattern = Vec::new();
        for &i in idx {
            loss += f64::from(
                mlp.forward(params, data.features(i), data.label(i), &mut ws)
                    .loss,
            );
            pattern.extend(ws.pre.iter().map(|&a| a > 0.0));
        }
        (loss, pattern)
    }

    #[test]
    fn buckets_hold_the_same_bits_as_the_whole_gradient() {
        let (mlp, params, data) = small();
        let idx: Vec<usize> = (0..37).collect();
        let mut whole = vec![0.0; mlp.param_len()];
        let mut ws = mlp.workspace();
        let a = mlp.sum_gradient(&params, &data, &idx, &mut whole, &mut ws);
        for blocks in [1, 2, 4, 6, 100] {
            let mut got = vec![f32::NAN; mlp.param_len()];
            let mut seen = Vec::new();
            let b = mlp.sum_gradient_in_buckets(&params, &data, &idx, blocks, &mut ws, |k, v| {
                seen.push(k);
                mlp.write_bucket(blocks, k, &v, &mut got);
            });
            assert_eq!(a, b);
            let want: Vec<usize> = (0..=blocks.min(6)).collect();
            assert_eq!(seen, want, "output layer first, then every block once");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&whole), "{blocks} blocks");
        }
    }

    #[test]
    fn layout_and_init() {
        let mlp = Mlp::new(64, 32, 10).unwrap();
        assert_eq!(mlp.param_len(), 64 * 32 + 32 + 32 * 10 + 10);
        let p = mlp.init(42);
        assert_eq!(p, mlp.init(42), "deterministic");
        assert_ne!(p, mlp.init(43));
        let bound = (6.0f32 / 96.0).sqrt();
        assert!(p[..2048].iter().all(|w| w.abs() <= bound));
        assert!(p[2048..2080].iter().all(|&b| b == 0.0), "b1 zero");
        assert!(p[2400..].iter().all(|&b| b == 0.0), "b2 zero");
        let mean_abs = p[..2048].iter().map(|w| w.abs()).sum::<f32>() / 2048.0;
        assert!((mean_abs - bound / 2.0).abs() < 0.02, "uniform: {mean_abs}");
        assert!(Mlp::new(64, 0, 10).is_err());
    }

    #[test]
    fn loss_is_cross_entropy() {
        // With all-zero weights the logits are the b2 biases: softmax of b2.
        let mlp = Mlp::new(2, 3, 4).unwrap();
        let mut params = vec![0.0; mlp.param_len()];
        let n = params.len();
        params[n - 4..].copy_from_slice(&[0.0, 1.0, 2.0, 3.0]);
        let mut ws = mlp.workspace();
        let s = mlp.forward(&params, &[0.5, 0.5], 1, &mut ws);
        let z = [0.0f64, 1.0, 2.0, 3.0];
        let expected = z.iter().map(|v| v.exp()).sum::<f64>().ln() - 1.0;
        assert!((f64::from(s.loss) - expected).abs() < 1e-6, "{}", s.loss);
        assert!(!s.correct);
        assert!(mlp.forward(&params, &[0.5, 0.5], 3, &mut ws).correct);
        // Huge logits must not overflow.
        params[n - 1] = 1.0e4;
        let s = mlp.forward(&params, &[0.5, 0.5], 0, &mut ws);
        assert!(
            s.loss.is_finite() && (s.loss - 1.0e4).abs() < 1.0,
            "{}",
            s.loss
        );
    }

    /// The analytic gradient matches central finite differences for every parameter whose
    /// perturbation does not flip a ReLU (where the loss has a kink).
    #[test]
    fn gradient_matches_finite_differences() {
        let (mlp, params, data) = small();
        let idx = [0, 5, 17, 1200];
        let mut grad = vec![0.0; mlp.param_len()];
        mlp.sum_gradient(&params, &data, &idx, &mut grad, &mut mlp.workspace());
        let (_, base_pattern) = batch_loss(&mlp, &params, &data, &idx);
        let eps = 1e-2f32;
        let (mut checked, mut skipped, mut nonzero) = (0, 0, 0);
        for k in 0..params.len() {
            let mut plus = params.clone();
            plus[k] += eps;
            let mut minus = params.clone();
            minus[k] -= eps;
            let (lp, pp) = batch_loss(&mlp, &plus, &data, &idx);
            let (lm, pm) = batch_loss(&mlp, &minus, &data, &idx);
            if pp != base_pattern || pm != base_pattern {
                skipped += 1;
                continue;
            }
            let numeric = (lp - lm) / (2.0 * f64::from(eps));
            let analytic = f64::from(grad[k]);
            let tol = 1e-3 + 1e-2 * analytic.abs();
            assert!(
                (numeric - analytic).abs() <= tol,
                "param {k}: numeric {numeric} vs analytic {analytic}"
            );
            checked += 1;
            nonzero += usize::from(analytic.abs() > 1e-3);
        }
        assert!(skipped * 20 < params.len(), "too many kinks: {skipped}");
        assert!(
            nonzero > params.len() / 4,
            "the check must see real gradients: {nonzero}"
        );
        assert!(checked > 0);
    }

    #[test]
    fn sum_gradient_is_the_sum_of_sample_gradients() {
        let (mlp, params, data) = small();
        let mut ws = mlp.workspace();
        let mut both = vec![0.0; mlp.param_len()];
        let stats = mlp.sum_gradient(&params, &data, &[3, 4], &mut both, &mut ws);
        let mut one = vec![0.0; mlp.param_len()];
        let s3 = mlp.sum_gradient(&params, &data, &[3], &mut one, &mut ws);
        let mut other = vec![0.0; mlp.param_len()];
        let s4 = mlp.sum_gradient(&params, &data, &[4], &mut other, &mut ws);
        for k in 0..both.len() {
            assert!((both[k] - (one[k] + other[k])).abs() <= 1e-6, "param {k}");
        }
        assert!((stats.loss_sum - (s3.loss_sum + s4.loss_sum)).abs() < 1e-9);
        assert_eq!(stats.correct, s3.correct + s4.correct);
        // sum_gradient overwrites: calling it twice gives the same buffer.
        let again = both.clone();
        mlp.sum_gradient(&params, &data, &[3, 4], &mut both, &mut ws);
        assert_eq!(both, again);
    }

    #[test]
    fn plain_sgd_learns_the_digits() {
        let data = load_embedded().unwrap();
        let mlp = Mlp::new(FEATURES, 16, CLASSES).unwrap();
        let mut params = mlp.init(1);
        let before = mlp.accuracy(&params, &data);
        let mut grad = vec![0.0; mlp.param_len()];
        let mut ws = mlp.workspace();
        let idx: Vec<usize> = (0..data.len()).collect();
        for _ in 0..5 {
            for batch in idx.chunks(32) {
                mlp.sum_gradient(&params, &data, batch, &mut grad, &mut ws);
                for (p, g) in params.iter_mut().zip(&grad) {
                    *p -= 0.5 * g / batch.len() as f32;
                }
            }
        }
        let after = mlp.accuracy(&params, &data);
        assert!(before < 0.3, "untrained accuracy {before}");
        assert!(after > 0.9, "trained accuracy {after}");
    }
}
