"""What both tritonclient checks share: `expect` and the runner that prints
one line per check, and the datatype cases they send through the `types`
model (each protocol datatype with values of shape [2, 3] that include the
type's extremes, so a server that narrows or widens a type is caught)."""

import traceback

import numpy as np


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def run(title, checks, show_traceback=True):
    """Runs (name, check) pairs, one line each; returns the exit status."""
    passed = failed = 0
    for name, check in checks:
        try:
            check()
        except CheckFailed as err:
            failed += 1
            print(f"FAIL {name}: {err}", flush=True)
        except Exception as err:  # a client error or a crash is a failed check too
            failed += 1
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
            if show_traceback:
                traceback.print_exc()
        else:
            passed += 1
            print(f"ok   {name}", flush=True)
    print(f"{title}: {passed} passed, {failed} failed")
    return 1 if failed else 0


def int_values(dtype):
    info = np.iinfo(dtype)
    middle = [0, 1, 42] if info.min == 0 else [-1, 0, 42]
    return np.array([[info.min] + middle[:2], [middle[2], info.max - 1, info.max]], dtype=dtype)


# Datatype name in the protocol -> (name prefix in the `types` model, numpy
# values of shape [2, 3]).
TYPE_CASES = {
    "BOOL": ("bool", np.array([[True, False, True], [False, False, True]])),
    "INT8": ("int8", int_values(np.int8)),
    "INT16": ("int16", int_values(np.int16)),
    "INT32": ("int32", int_values(np.int32)),
    "INT64": ("int64", int_values(np.int64)),
    "UINT8": ("uint8", int_values(np.uint8)),
    "UINT16": ("uint16", int_values(np.uint16)),
    "UINT32": ("uint32", int_values(np.uint32)),
    "UINT64": ("uint64", int_values(np.uint64)),
    "FP16": ("fp16", np.array([[0.5, -1.25, 65504.0], [6.1035156e-05, 3.140625, -2048.0]], dtype=np.float16)),
    "FP32": ("fp32", np.array([[0.1, -3.4028235e38, 1.1754944e-38], [1e-45, 2.5, -7.0]], dtype=np.float32)),
    "FP64": ("fp64", np.array([[0.1, -1.7976931348623157e308, 2.2250738585072014e-308], [5e-324, 1 / 3, -7.0]])),
    # ONNX Runtime hands strings over as NUL-terminated C strings, so no NUL
    # bytes here; JSON carries text, so every element is valid UTF-8.
    "BYTES": ("bytes", np.array([[b"", b"quiver", "h\u00e9llo \u2713".encode()], [b"a b", b'{"k": 1}', b"x" * 300]], dtype=np.object_)),
}
