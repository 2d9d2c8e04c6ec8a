"""Concept-switch streams nobody tuned the loop for, and the references
they are measured against.

    python switch.py write OUT_DIR [NAME...]       # the streams as CSV (+ meta.json)
    python switch.py score CSV [PREDICTIONS_CSV]   # references, and the loop's run

`write` produces each stream in quiver-bench's CSV format (time,
label_time, features, label; bench/src/streams/table.rs) with its label
arriving LABEL_DELAY rows late, and a `<name>.meta.json` naming the switch
row, so `scripts/demo.sh --stream OUT_DIR/<name>.csv` runs it with no
options. Every stream draws its rows from river's synthetic generators:
one concept up to the switch row, another after it (a sudden switch).

`score` measures recovery after the switch on the rows the loop scores
(those after the first 10 %): window accuracy (the WINDOW predictions
ending at +2k, +5k, +10k and +20k rows after the switch) and accuracy over
all post-switch rows, for

- river's Hoeffding adaptive tree and adaptive random forest, each label
  learned only once the stream reaches its label time (as late as the
  loop gets it);
- an oracle: LightGBM trained on 20,000 further rows of the new concept,
  which knows the switch and the new concept in advance;
- the loop, from a `quiver-bench stream` predictions.csv, if given.

It prints one JSON object per learner and a Markdown table.
"""

import heapq
import json
import os
import sys

import lightgbm as lgb
import numpy as np
import pandas as pd
from river import forest, tree
from river.datasets import synth

LABEL_DELAY = 800
ROWS = 50_000
SWITCH = 24_000
WINDOW = 1_000
AFTER = (2_000, 5_000, 10_000, 20_000)


def agrawal(function):
    return lambda seed: synth.Agrawal(classification_function=function, seed=seed)


def sea(variant):
    return lambda seed: synth.SEA(variant=variant, noise=0.0, seed=seed)


def hyperplane(weights_seed):
    # A fixed plane per seed (no gradual rotation): the switch moves it.
    return lambda seed: synth.Hyperplane(seed=weights_seed * 1000 + seed, n_features=10, noise_percentage=0.05)


# name → (concept before, concept after, seed)
STREAMS = {
    "agrawal-5-7-s77": (agrawal(5), agrawal(7), 77),
    "agrawal-1-3-s11": (agrawal(1), agrawal(3), 11),
    "agrawal-2-8-s23": (agrawal(2), agrawal(8), 23),
    "sea-0-3-s5": (sea(0), sea(3), 5),
    "hyperplane-s7": (hyperplane(7), hyperplane(8), 7),
}


def rows(make, seed, n):
    out = []
    for x, y in make(seed).take(n):
        out.append([float(v) for v in x.values()] + [int(y)])
    names = list(next(iter(make(seed).take(1)))[0].keys())
    return names, out


def write(out_dir, names):
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        before, after, seed = STREAMS[name]
        cols, a = rows(before, seed, SWITCH)
        # The new concept's rows come from the same feature generator with
        # another seed, so the features keep their distribution and only
        # the labelling function changes: a feature-drift monitor sees
        # nothing.
        _, b = rows(after, seed + 1, ROWS - SWITCH)
        df = pd.DataFrame(a + b, columns=cols + ["label"])
        df.insert(0, "label_time", np.arange(ROWS) + LABEL_DELAY)
        df.insert(0, "time", np.arange(ROWS))
        path = os.path.join(out_dir, f"{name}.csv")
        df.to_csv(path, index=False)
        meta = {"time_unit": "row", "onsets": [{"row": SWITCH, "width": 0, "label": "concept switch"}]}
        with open(os.path.join(out_dir, f"{name}.meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        print(path)


def online(model, X, y, names, start, delay):
    """Predicts each row, then learns its label once the stream has moved
    `delay` rows on (the first 10 % at once, as the loop's version 1)."""
    p = np.empty(len(y))
    pending = []
    for i in range(len(y)):
        while pending and pending[0][0] <= i:
            _, j = heapq.heappop(pending)
            model.learn_one(dict(zip(names, X[j])), int(y[j]))
        x = dict(zip(names, X[i]))
        p[i] = model.predict_proba_one(x).get(1, 0.5)
        if i < start:
            model.learn_one(x, int(y[i]))
        else:
            heapq.heappush(pending, (i + delay, i))
    return p


def recovery(correct, seq, switch):
    """Window accuracy at each offset after the switch, and overall after."""
    order = np.argsort(seq)
    seq, correct = seq[order], correct[order]
    out = {}
    for k in AFTER:
        end = np.searchsorted(seq, switch + k)
        lo = max(0, end - WINDOW)
        out[f"+{k // 1000}k"] = float(correct[lo:end].mean()) if end > lo else None
    after = seq >= switch
    out["post_switch"] = float(correct[after].mean())
    before = (seq < switch) & (seq >= switch - WINDOW)
    out["before"] = float(correct[before].mean()) if before.any() else None
    return out


def score(csv, predictions=None):
    name = os.path.basename(csv).removesuffix(".csv")
    df = pd.read_csv(csv)
    y = df["label"].to_numpy().astype(int)
    feats = df.drop(columns=["time", "label_time", "label"])
    cols = list(feats.columns)
    X = feats.to_numpy(dtype=np.float64)
    start = len(y) // 10
    with open(csv.removesuffix(".csv") + ".meta.json") as f:
        switch = json.load(f)["onsets"][0]["row"]
    delay = int((df["label_time"] - df["time"]).iloc[0])
    seq = np.arange(start, len(y))
    # The references take minutes (the forest above all): kept next to the
    # stream and reused for each run of the loop scored against them.
    cache = csv.removesuffix(".csv") + ".refs.json"
    if os.path.exists(cache):
        with open(cache) as f:
            results = json.load(f)
    else:
        results = references(name, X, y, cols, start, switch, delay, seq)
        with open(cache, "w") as f:
            json.dump(results, f, indent=2)
    results = {k: v for k, v in results.items() if not k.startswith("oracle")}
    results.update(oracle(name, X, y, switch))
    report(name, results, predictions, switch)


def references(name, X, y, cols, start, switch, delay, seq):
    results = {}
    for label, make in [
        ("river Hoeffding adaptive tree", lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=42)),
        ("river adaptive random forest", lambda: forest.ARFClassifier(n_models=10, seed=42)),
    ]:
        p = online(make(), X, y, cols, start, delay)[start:]
        results[label] = recovery((p >= 0.5) == y[start:], seq, switch)
    return results


def oracle(name, X, y, switch):
    """LightGBM trained on 20,000 further rows of the new concept, drawn
    by the same generator after the stream's own (a hyperplane's weights
    come from its seed, so another seed would be another concept)."""
    results = {}
    if name in STREAMS:
        _, after, seed = STREAMS[name]
        _, drawn = rows(after, seed + 1, ROWS - SWITCH + 20_000)
        fresh = np.array(drawn[ROWS - SWITCH :])
        oracle = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.05, num_leaves=31, random_state=42, verbose=-1)
        oracle.fit(fresh[:, :-1], fresh[:, -1].astype(int))
        post = np.arange(switch, len(y))
        p = oracle.predict_proba(X[post])[:, 1]
        results["oracle (LightGBM on 20k further rows of the new concept)"] = recovery((p >= 0.5) == y[post], post, switch)
    return results


def report(name, results, predictions, switch):
    if predictions:
        run = pd.read_csv(predictions)
        results["the loop (scripts/demo.sh)"] = recovery(
            ((run["p"] >= 0.5).astype(int) == run["label"]).to_numpy(), run["seq"].to_numpy(), switch
        )
    for label, r in results.items():
        print(json.dumps({"stream": name, "learner": label, **r}))
    keys = [f"+{k // 1000}k" for k in AFTER] + ["post_switch"]
    print(f"\n| stream | learner | before | {' | '.join(keys)} |")
    print("|---|---|---" + "|---" * len(keys) + "|")
    for label, r in results.items():
        cells = " | ".join("-" if r[k] is None else f"{r[k]:.3f}" for k in keys)
        before = "-" if r["before"] is None else f"{r['before']:.3f}"
        print(f"| {name} | {label} | {before} | {cells} |")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3:] or list(STREAMS))
    elif len(sys.argv) >= 3 and sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
