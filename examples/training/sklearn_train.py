"""A Quiver training command: a scikit-learn pipeline, exported with skl2onnx.

    [models.commands.sklearn]
    argv = ["python", "examples/training/sklearn_train.py"]
    params = { estimator = "logistic", C = 1.0 }

`estimator`: `logistic` (a standard scaler and logistic regression, or
ridge regression) or `hist_gradient_boosting`; the other params go to the
estimator as they are.
"""

import numpy as np
import onnx
import skl2onnx
import sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import quiver_command

spec, x, y, holdout = quiver_command.load()
params = dict(spec["config"].get("params") or {})
kind = params.pop("estimator", "logistic")
classification = spec["task"] == "classification"
if kind == "logistic":
    estimator = LogisticRegression(max_iter=1000, **params) if classification else Ridge(**params)
elif kind == "hist_gradient_boosting":
    cls = HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
    estimator = cls(random_state=spec["seed"], **params)
else:
    raise SystemExit(f"unknown estimator '{kind}'")
pipeline = make_pipeline(StandardScaler(), estimator)
pipeline.fit(x, y)
quiver_command.progress(f"trained {kind}")
if classification:
    quiver_command.check_classes(spec, pipeline.classes_)
    predictions = pipeline.predict_proba(holdout)
    options = {id(pipeline): {"zipmap": False}}
else:
    predictions = pipeline.predict(holdout)
    options = None
exported = skl2onnx.convert_sklearn(
    pipeline,
    initial_types=[("input", FloatTensorType([None, x.shape[1]]))],
    options=options,
)
quiver_command.finish(
    spec,
    exported,
    predictions,
    {
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    },
)
