#!/usr/bin/env python3
"""Exports classifiers and a regressor the way users do, for tests/exports.rs.

    python tests/python/export_models.py OUT_DIR

Trains on a fixed, seeded dataset with scikit-learn, LightGBM and XGBoost,
exports each with its converter's defaults (skl2onnx's `to_onnx`,
onnxmltools' `convert_lightgbm` / `convert_xgboost`), and writes

    OUT_DIR/models/<name>/1/model.onnx   a model repository Quiver serves
    OUT_DIR/expected.json                the test rows, and per model the
                                         library's own predict_proba /
                                         predict on them, the class labels,
                                         the output names and the versions

Nothing is checked here: the Rust test compares Quiver's answers with
these. Byte-identical on a second run with the same library versions.
"""

import json
import os
import sys
import warnings

import numpy as np

warnings.filterwarnings("ignore")

import lightgbm  # noqa: E402
import onnxmltools  # noqa: E402
import sklearn  # noqa: E402
import skl2onnx  # noqa: E402
import xgboost  # noqa: E402
from onnxmltools.convert.common.data_types import FloatTensorType  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.ensemble import (  # noqa: E402
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

FEATURES = 8
TEST_ROWS = 32
SEED = 7


def classification(classes, names=None):
    x, y = make_classification(
        n_samples=600,
        n_features=FEATURES,
        n_informative=5,
        n_redundant=1,
        n_classes=classes,
        n_clusters_per_class=1,
        random_state=SEED,
    )
    # Float32 data, as ONNX sees it, so no row sits between a split
    # threshold and its float32 rounding.
    x = x.astype(np.float32)
    if names is not None:
        y = np.array(names)[y]
    return x, y


def test_rows():
    rng = np.random.default_rng(SEED)
    return (rng.standard_normal((TEST_ROWS, FEATURES)) * 1.5).astype(np.float32)


def skl2onnx_export(model, x):
    # skl2onnx's defaults: input type from a sample, ZipMap on classifiers.
    return skl2onnx.to_onnx(model, x[:1])


def onnxmltools_types():
    return [("input", FloatTensorType([None, FEATURES]))]


def plain(values):
    """numpy values as JSON-ready Python values."""
    return [v.item() if hasattr(v, "item") else v for v in values]


def classifier_entry(model, onnx_model, converter, x):
    outputs = [o.name for o in onnx_model.graph.output]
    return {
        "converter": converter,
        "input": onnx_model.graph.input[0].name,
        "label_output": outputs[0],
        "probability_output": outputs[1],
        "zipmap": any(n.op_type == "ZipMap" for n in onnx_model.graph.node),
        "classes": plain(model.classes_),
        "labels": plain(model.predict(x)),
        "probabilities": model.predict_proba(x).astype(np.float64).tolist(),
    }


def main():
    out = sys.argv[1]
    x_test = test_rows()
    exported = {}

    def save(name, onnx_model, entry):
        path = os.path.join(out, "models", name, "1")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "model.onnx"), "wb") as f:
            f.write(onnx_model.SerializeToString())
        exported[name] = entry

    # scikit-learn through skl2onnx.
    x, y = classification(3)
    rf = RandomForestClassifier(n_estimators=60, max_depth=8, random_state=SEED).fit(x, y)
    m = skl2onnx_export(rf, x)
    save("sklearn_random_forest", m, classifier_entry(rf, m, "skl2onnx", x_test))

    x, y = classification(2, ["no", "yes"])
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    m = skl2onnx_export(pipe, x)
    save("sklearn_scaler_logistic", m, classifier_entry(pipe, m, "skl2onnx", x_test))

    x, y = classification(3, ["setosa", "virginica", "versicolor"])
    hgb = HistGradientBoostingClassifier(max_iter=40, random_state=SEED).fit(x, y)
    m = skl2onnx_export(hgb, x)
    save("sklearn_hist_gradient_boosting", m, classifier_entry(hgb, m, "skl2onnx", x_test))

    xr, yr = make_regression(n_samples=600, n_features=FEATURES, noise=0.5, random_state=SEED)
    xr = xr.astype(np.float32)
    # Targets near 1, so float32 outputs hold 1e-5 in absolute terms.
    yr = (yr - yr.mean()) / yr.std()
    gbr = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=SEED).fit(xr, yr)
    m = skl2onnx_export(gbr, xr)
    save(
        "sklearn_gradient_boosting_regressor",
        m,
        {
            "converter": "skl2onnx",
            "input": m.graph.input[0].name,
            "output": m.graph.output[0].name,
            "predictions": gbr.predict(x_test).astype(np.float64).tolist(),
        },
    )

    # LightGBM and XGBoost through onnxmltools.
    x, y = classification(3)
    lgbm = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=15, random_state=SEED, verbose=-1).fit(x, y)
    m = onnxmltools.convert_lightgbm(lgbm, initial_types=onnxmltools_types())
    save("lightgbm_classifier", m, classifier_entry(lgbm, m, "onnxmltools", x_test))

    # The second case: no ZipMap, `label` still declared [1].
    m = onnxmltools.convert_lightgbm(lgbm, initial_types=onnxmltools_types(), zipmap=False)
    save("lightgbm_no_zipmap", m, classifier_entry(lgbm, m, "onnxmltools (zipmap=False)", x_test))

    x, y = classification(2, ["churn", "stay"])
    lgbm_s = lightgbm.LGBMClassifier(n_estimators=40, num_leaves=15, random_state=SEED, verbose=-1).fit(x, y)
    m = onnxmltools.convert_lightgbm(lgbm_s, initial_types=onnxmltools_types())
    save("lightgbm_string_labels", m, classifier_entry(lgbm_s, m, "onnxmltools", x_test))

    x, y = classification(2)
    xgb = xgboost.XGBClassifier(n_estimators=40, max_depth=4, random_state=SEED).fit(x, y)
    m = onnxmltools.convert_xgboost(xgb, initial_types=onnxmltools_types())
    save("xgboost_classifier", m, classifier_entry(xgb, m, "onnxmltools", x_test))

    versions = {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnxmltools": onnxmltools.__version__,
        "lightgbm": lightgbm.__version__,
        "xgboost": xgboost.__version__,
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(
            {"versions": versions, "rows": x_test.astype(np.float64).tolist(), "models": exported},
            f,
            indent=1,
            sort_keys=True,
        )


if __name__ == "__main__":
    main()
