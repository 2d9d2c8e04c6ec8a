"""Reference baselines on the demo's streams, with labels at once (an upper
bound for the loop, whose labels arrive late).

    python baselines.py OUT_DIR STREAM_CSV...

Each stream CSV is in quiver-bench's format (time, label_time, features,
label; see bench/src/streams/table.rs). Every learner is scored on the same
rows, those after the first 10 % (the slice the demo bootstraps version 1
from), prequentially: each row is predicted before its label is learned.

- majority: the majority class of the first 10 %;
- static logistic regression and static GBDT (LightGBM) trained on the
  first 10 %, never updated;
- GBDT retrained every 2,000 rows on the last 20,000 (LightGBM);
- river's online learners: Hoeffding tree, Hoeffding adaptive tree and
  adaptive random forest (10 trees), learning every row; on flights also
  with its natural label delay (each row learned once stream time reaches
  its label time), as the loop gets its labels.

Streams run replace their earlier results in OUT_DIR/baselines.json; the
others are kept.

Writes OUT_DIR/baselines.json and OUT_DIR/baselines.md (accuracy, log
loss, ROC AUC, seconds per stream and learner) and prints the table.
"""

import heapq
import json
import os
import sys
import time
import warnings

import lightgbm as lgb
import numpy as np
import pandas as pd
from river import forest, tree
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

warnings.filterwarnings("ignore")
SEED = 42
RETRAIN_EVERY = 2_000
RETRAIN_WINDOW = 20_000
# Streams whose labels arrive late enough to matter (flights: on landing,
# hours after the prediction) also get the online learners with that delay.
DELAYED = {"flights.csv": True}


def gbdt():
    return lgb.LGBMClassifier(n_estimators=100, learning_rate=0.1, num_leaves=31, random_state=SEED, verbose=-1)


def scores(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return {
        "accuracy": float(accuracy_score(y, p >= 0.5)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "roc_auc": float(roc_auc_score(y, p)) if len(set(y)) == 2 else None,
    }


def static(model, X, y, start):
    model.fit(X[:start], y[:start])
    return model.predict_proba(X[start:])[:, 1]


def retrained(X, y, start):
    p = np.empty(len(y) - start)
    model = gbdt().fit(X[:start], y[:start])
    for lo in range(start, len(y), RETRAIN_EVERY):
        hi = min(lo + RETRAIN_EVERY, len(y))
        p[lo - start : hi - start] = model.predict_proba(X[lo:hi])[:, 1]
        model = gbdt().fit(X[max(0, hi - RETRAIN_WINDOW) : hi], y[max(0, hi - RETRAIN_WINDOW) : hi])
    return p


def online(model, X, y, names, start, times=None):
    """Learns each row right after predicting it; with `times` (the row
    times and label times) each label only once stream time reaches it, as
    the loop gets them (the first 10 % are learned at once, as the loop's
    version 1 is trained on them)."""
    p = np.empty(len(y) - start)
    pending = []
    for i in range(len(y)):
        x = dict(zip(names, X[i]))
        if times is not None:
            t, label_t = times
            while pending and pending[0][0] <= t[i]:
                _, j = heapq.heappop(pending)
                model.learn_one(dict(zip(names, X[j])), int(y[j]))
        if i >= start:
            p[i - start] = model.predict_proba_one(x).get(1, 0.5)
        if times is None or i < start:
            model.learn_one(x, int(y[i]))
        else:
            heapq.heappush(pending, (times[1][i], i))
    return p


def run(path, delayed):
    df = pd.read_csv(path)
    y = df["label"].to_numpy().astype(int)
    feats = df.drop(columns=[c for c in ("time", "label_time", "label") if c in df.columns])
    names = list(feats.columns)
    X = feats.to_numpy(dtype=np.float64)
    start = len(y) // 10
    yt = y[start:]
    majority = int(np.mean(y[:start]) >= 0.5)
    learners = {
        "majority (first 10 %)": lambda: np.full(len(yt), 0.999 if majority else 0.001),
        "static logistic regression (first 10 %)": lambda: static(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), X, y, start
        ),
        "static GBDT (first 10 %)": lambda: static(gbdt(), X, y, start),
        "GBDT retrained every 2k on last 20k": lambda: retrained(X, y, start),
        "river Hoeffding tree": lambda: online(tree.HoeffdingTreeClassifier(), X, y, names, start),
        "river Hoeffding adaptive tree": lambda: online(
            tree.HoeffdingAdaptiveTreeClassifier(seed=SEED), X, y, names, start
        ),
        "river adaptive random forest": lambda: online(
            forest.ARFClassifier(n_models=10, seed=SEED), X, y, names, start
        ),
    }
    if delayed and "label_time" in df.columns:
        # The same online learners with the stream's own label delay, as the
        # loop gets its labels: the fair comparison for the loop.
        times = (df["time"].to_numpy(), df["label_time"].to_numpy())
        learners.update(
            {
                "river Hoeffding tree, labels on arrival": lambda: online(
                    tree.HoeffdingTreeClassifier(), X, y, names, start, times
                ),
                "river Hoeffding adaptive tree, labels on arrival": lambda: online(
                    tree.HoeffdingAdaptiveTreeClassifier(seed=SEED), X, y, names, start, times
                ),
                "river adaptive random forest, labels on arrival": lambda: online(
                    forest.ARFClassifier(n_models=10, seed=SEED), X, y, names, start, times
                ),
            }
        )
    out = {"stream": os.path.basename(path), "rows": len(y), "scored_rows": len(yt), "positive": float(y.mean()), "results": {}}
    for name, fit in learners.items():
        t = time.time()
        p = fit()
        r = scores(yt, p)
        r["seconds"] = round(time.time() - t, 1)
        out["results"][name] = r
        print(f"{out['stream']}: {name}: {r}", file=sys.stderr, flush=True)
    return out


HEADER = """# Reference baselines on the demo's streams

Labels at once (an upper bound for the loop, whose labels arrive late) unless
a learner says "labels on arrival" (the stream's own delay, as the loop); every
learner scored prequentially on the rows after the first 10 % (the slice the
demo bootstraps version 1 from). Produced by `bench/datasets/baselines.sh` on
the 2-core development machine (seconds include contention with builds).

| stream | rows scored | positive | learner | accuracy | log loss | ROC AUC | seconds |
|---|---|---|---|---|---|---|---|
"""


def table(results):
    rows = []
    for r in results:
        for name, m in r["results"].items():
            auc = "-" if m["roc_auc"] is None else f"{m['roc_auc']:.3f}"
            rows.append(
                f"| {r['stream'].replace('.csv', '')} | {r['scored_rows']} | {r['positive']:.3f} | {name} "
                f"| {m['accuracy']:.3f} | {m['log_loss']:.3f} | {auc} | {m['seconds']} |"
            )
    return HEADER + "\n".join(rows) + "\n"


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    # Streams run now replace their earlier results; the others are kept.
    path = os.path.join(out_dir, "baselines.json")
    earlier = []
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
    fresh = [run(p, DELAYED.get(os.path.basename(p), False)) for p in sys.argv[2:]]
    names = {r["stream"] for r in fresh}
    results = [r for r in earlier if r["stream"] not in names] + fresh
    order = {s: i for i, s in enumerate(["hyperplane.csv", "rainfall.csv", "flights.csv"])}
    results.sort(key=lambda r: order.get(r["stream"], len(order)))
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    md = table(results)
    with open(os.path.join(out_dir, "baselines.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
