"""A Quiver training command: LightGBM, exported with onnxmltools.

    [models.commands.lightgbm]
    argv = ["python", "examples/training/lightgbm_train.py"]
    params = { n_estimators = 200, learning_rate = 0.05, num_leaves = 31 }

`params` go to LightGBM's scikit-learn estimator as they are.
"""

import lightgbm
import numpy as np
import onnx
import onnxmltools
from onnxmltools.convert.common.data_types import FloatTensorType

import quiver_command

spec, x, y, holdout = quiver_command.load()
params = {"n_estimators": 100, "learning_rate": 0.1, "verbose": -1}
params.update(spec["config"].get("params") or {})
classification = spec["task"] == "classification"
if classification:
    model = lightgbm.LGBMClassifier(random_state=spec["seed"], **params)
else:
    model = lightgbm.LGBMRegressor(random_state=spec["seed"], **params)
model.fit(x, y)
quiver_command.progress(f"trained {model.n_estimators_} trees")
if classification:
    quiver_command.check_classes(spec, model.classes_)
    predictions = model.predict_proba(holdout)
else:
    predictions = model.predict(holdout)

initial = [("input", FloatTensorType([None, x.shape[1]]))]
if classification:
    exported = onnxmltools.convert_lightgbm(model, initial_types=initial, zipmap=False)
else:
    exported = onnxmltools.convert_lightgbm(model, initial_types=initial)
quiver_command.finish(
    spec,
    exported,
    predictions,
    {
        "lightgbm": lightgbm.__version__,
        "onnxmltools": onnxmltools.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    },
)
