"""The loop against river's adaptive random forest on flights, paired row
by row, with a bootstrap over days.

    python paired.py FLIGHTS_CSV PREDICTIONS_CSV

The forest learns each label once the stream reaches its label time, as
the loop gets it (baselines.py `online` with the stream's times); its
predictions are kept next to the stream (`flights.arf-arrival.npy`) and
reused. Both are scored on the rows after the first 10 % (the loop's
`seq`); the per-row log-loss difference (loop − forest) is averaged per
day, and days are resampled with replacement (2,000 times, seed 42) for a
95 % interval of the mean difference over rows.
"""

import os
import sys

import numpy as np
import pandas as pd
from river import forest

from baselines import SEED, online


def forest_predictions(csv):
    cache = csv.removesuffix(".csv") + ".arf-arrival.npy"
    if os.path.exists(cache):
        return np.load(cache)
    df = pd.read_csv(csv)
    y = df["label"].to_numpy().astype(int)
    feats = df.drop(columns=["time", "label_time", "label"])
    X = feats.to_numpy(dtype=np.float64)
    start = len(y) // 10
    times = (df["time"].to_numpy(), df["label_time"].to_numpy())
    p = online(forest.ARFClassifier(n_models=10, seed=SEED), X, y, list(feats.columns), start, times)
    np.save(cache, p)
    return p


def main():
    csv, predictions = sys.argv[1], sys.argv[2]
    df = pd.read_csv(csv)
    start = len(df) // 10
    arf = forest_predictions(csv)
    run = pd.read_csv(predictions).sort_values("seq")
    seq = run["seq"].to_numpy()
    y = df["label"].to_numpy()[seq]
    assert (run["label"].to_numpy() == y).all(), "the predictions are not of this stream"

    def loss(p):
        p = np.clip(p, 1e-7, 1 - 1e-7)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    mine, theirs = loss(run["p"].to_numpy()), loss(arf[seq - start])
    day = (df["month"].to_numpy() * 100 + df["day"].to_numpy())[seq]
    days, idx = np.unique(day, return_inverse=True)
    diff_sum = np.bincount(idx, weights=mine - theirs)
    rows = np.bincount(idx)
    rng = np.random.default_rng(42)
    boots = []
    for _ in range(2000):
        pick = rng.integers(0, len(days), len(days))
        boots.append(diff_sum[pick].sum() / rows[pick].sum())
    lo, hi = np.percentile(boots, [2.5, 97.5])
    better = (diff_sum < 0).mean()
    print(f"rows {len(seq)}, days {len(days)}")
    print(f"log loss: loop {mine.mean():.4f}, river ARF (labels on arrival) {theirs.mean():.4f}")
    print(f"difference (loop - forest) {mine.mean() - theirs.mean():+.4f}, 95 % bootstrap over days [{lo:+.4f}, {hi:+.4f}]")
    print(f"the loop is better on {better:.0%} of days")


if __name__ == "__main__":
    main()
