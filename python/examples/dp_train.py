"""Data-parallel SGD on the UCI digits in numpy, the Python twin of the Rust ``dp_train``
(crates/dp-train): same data (crates/dp-train/data/digits.csv.gz: the first 1,500 samples to
train, the last 297 to test, pixels / 16), same 64-H-10 ReLU perceptron and flat parameter
layout (w1 [H x 64], b1, w2 [10 x H], b2), same Xavier-uniform init from the same SplitMix64
stream, same seeded batch order, same hyper-parameters and the same printed lines, so that the
two runs can be compared line by line:

    python -m tutti.launch -n 4 python/examples/dp_train.py      # 4 workers, batch 64 = 4 x 16
    tutti launch -n 4 -- dp_train                                 # the Rust run

Per step each rank sums the cross-entropy gradients of its slice of the global batch, one
``tutti.all_reduce`` adds the slices up, and every rank applies ``theta -= lr/B * grad``.

Why the numbers agree but not to the last bit: numpy sums a batch's gradients with matrix
products, Rust sample by sample; float32 addition is not associative, so parameters differ by
round-off, a few 1e-7 after the default 598 steps, far below what any real difference (a wrong
slice, a missing rank, a stale gradient: >= 1e-3 in the first step) would make. The printed
losses (4 decimals) and accuracies (3 decimals) come out the same.
"""

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

import tutti

M64 = (1 << 64) - 1
DATA = Path(__file__).resolve().parents[2] / "crates" / "dp-train" / "data" / "digits.csv.gz"
FEATURES, CLASSES, TEST_LEN = 64, 10, 297


class SplitMix64:
    """crates/dp-train/src/data.rs's generator, bit for bit."""

    def __init__(self, seed):
        self.state = seed & M64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def next_f32(self):
        return np.float32(self.next_u64() >> 40) / np.float32(1 << 24)

    def below(self, bound):
        return (self.next_u64() * bound) >> 64


def load(path):
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    x = rows[:, :FEATURES].astype(np.float32) / np.float32(16.0)
    y = rows[:, FEATURES]
    return (x[:-TEST_LEN], y[:-TEST_LEN]), (x[-TEST_LEN:], y[-TEST_LEN:])


def init(hidden, seed):
    """The flat parameters (w1, b1, w2, b2) of model.rs's `Mlp::init`."""
    rng = SplitMix64(seed)
    parts = []
    for fan_in, fan_out in ((FEATURES, hidden), (hidden, CLASSES)):
        a = np.sqrt(np.float32(6.0) / np.float32(fan_in + fan_out))
        u = np.array([rng.next_f32() for _ in range(fan_in * fan_out)], dtype=np.float32)
        parts += [(np.float32(2.0) * u - np.float32(1.0)) * a, np.zeros(fan_out, np.float32)]
    return np.concatenate(parts)


def views(params, hidden):
    w1 = params[:hidden * FEATURES].reshape(hidden, FEATURES)
    b1 = params[hidden * FEATURES:hidden * FEATURES + hidden]
    at = hidden * FEATURES + hidden
    w2 = params[at:at + CLASSES * hidden].reshape(CLASSES, hidden)
    return w1, b1, w2, params[at + CLASSES * hidden:]


def forward(params, hidden, x):
    w1, b1, w2, b2 = views(params, hidden)
    pre = x @ w1.T + b1
    act = np.maximum(pre, np.float32(0.0))
    z = act @ w2.T + b2
    m = z.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return pre, act, z, lse


def sum_gradient(params, hidden, x, y, grad):
    """The summed gradient of the batch (x, y) into ``grad``; returns (loss sum, correct)."""
    w1, b1, w2, b2 = views(params, hidden)
    pre, act, z, lse = forward(params, hidden, x)
    rows = np.arange(len(y))
    losses = (lse[:, 0] - z[rows, y]).astype(np.float64)
    correct = int((z.argmax(axis=1) == y).sum())
    dz = np.exp(z - lse)
    dz[rows, y] -= np.float32(1.0)
    dh = dz @ w2
    dh[pre <= 0] = 0
    g1, gb1, g2, gb2 = views(grad, hidden)
    g1[...] = dh.T @ x
    gb1[...] = dh.sum(axis=0)
    g2[...] = dz.T @ act
    gb2[...] = dz.sum(axis=0)
    return losses.sum(), correct


def epoch_order(n, seed, epoch):
    order = list(range(n))
    rng = SplitMix64(seed ^ ((epoch * 0xD1B54A32D192ED03) & M64))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return np.array(order)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=26)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--save-params", help="rank 0 writes the final parameters (little-endian f32)")
    args = ap.parse_args()

    tutti.init_process_group()
    rank, world = tutti.get_rank(), tutti.get_world_size()
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} is not divisible by the world size {world}")
    (xtr, ytr), (xte, yte) = load(args.data)
    if rank == 0:
        print(f"dp_train: {world} rank(s), {len(ytr)} train / {len(yte)} test samples "
              f"({Path(args.data).name}), MLP {FEATURES}-{args.hidden}-{CLASSES}, global batch "
              f"{args.batch} ({args.batch // world} per rank), lr {args.lr}, {args.epochs} epochs, "
              f"seed {args.seed}", flush=True)
    params = init(args.hidden, args.seed)
    grad = np.zeros_like(params)
    scale = np.float32(args.lr) / np.float32(args.batch)
    shuffle = SplitMix64(args.seed ^ 0x53485546464C4521).next_u64()
    per_epoch = len(ytr) // args.batch
    total = per_epoch * args.epochs
    mine = slice(rank * args.batch // world, (rank + 1) * args.batch // world)
    window, since, step, last_loss = np.zeros(2), time.perf_counter(), 0, 0.0
    for epoch in range(args.epochs):
        order = epoch_order(len(ytr), shuffle, epoch)
        for s in range(per_epoch):
            idx = order[s * args.batch:(s + 1) * args.batch][mine]
            loss, correct = sum_gradient(params, args.hidden, xtr[idx], ytr[idx], grad)
            tutti.all_reduce(grad)
            params -= scale * grad
            step += 1
            window += (loss, correct)
            steps_in_window = step % args.log_every or args.log_every
            if step % args.log_every == 0 or step == total:
                tutti.all_reduce(window)
                samples = steps_in_window * args.batch
                rate = samples / max(time.perf_counter() - since, 1e-9)
                last_loss = window[0] / samples
                if rank == 0:
                    print(f"step {step}/{total}  loss {last_loss:.4f}  acc {window[1] / samples:.3f}  "
                          f"samples/s {rate:.0f}", flush=True)
                window[:], since = 0, time.perf_counter()
    if rank == 0:
        _, _, z, _ = forward(params, args.hidden, xte)
        hits = int((z.argmax(axis=1) == yte).sum())
        print(f"test accuracy {hits / len(yte):.3f} ({hits}/{len(yte)}) after {total} steps "
              f"(last train loss {last_loss:.4f})", flush=True)
        if args.save_params:
            params.astype("<f4").tofile(args.save_params)
    # Every replica holds the same parameters.
    ref = params.copy()
    tutti.broadcast(ref, src=0)
    assert np.array_equal(ref, params), f"rank {rank}: parameters differ from rank 0's"
    tutti.destroy_process_group()


if __name__ == "__main__":
    main()
