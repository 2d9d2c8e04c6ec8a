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
  adaptive random forest (10 trees), learning every row.

Writes OUT_DIR/baselines.json and OUT_DIR/baselines.md (accuracy, log
loss, ROC AUC, seconds per stream and learner) and prints the table.
"""

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


def online(model, X, y, names, start):
    p = np.empty(len(y) - start)
    for i in range(len(y)):
        x = dict(zip(names, X[i]))
        if i >= start:
            p[i - start] = model.predict_proba_one(x).get(1, 0.5)
        model.learn_one(x, int(y[i]))
    return p


def run(path):
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

Labels at once (an upper bound for the loop, whose labels arrive late); every
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
    results = [run(p) for p in sys.argv[2:]]
    with open(os.path.join(out_dir, "baselines.json"), "w") as f:
        json.dump(results, f, indent=2)
    md = table(results)
    with open(os.path.join(out_dir, "baselines.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
