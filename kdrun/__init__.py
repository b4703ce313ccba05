"""kdrun: a command-line experiment runner for knowledge distillation.

The Python API after training (imported on first use, so `import kdrun` stays light):
`kdrun.load_model(path_or_run_dir, which="student")` -> (eval-mode model, ModelInfo with its
preprocessing), `kdrun.evaluate(...)`, `kdrun.export_model(...)` (kdrun/export.py)
and `kdrun.measure(model, image_shape, device)` (kdrun/deploy.py). Runs: `kdrun.run.run(cfg)`.
"""

__version__ = "0.1.0"

_API = {"load_model": "kdrun.export", "evaluate": "kdrun.export", "export_model": "kdrun.export",
        "ModelInfo": "kdrun.export", "measure": "kdrun.deploy"}
__all__ = ["KdrunError", "Interrupted", *_API]


class KdrunError(Exception):
    """An error the user can fix (a bad value, missing data, a wrong checkpoint).

    The CLI prints its message as one line and exits non-zero, without a traceback; the message
    names the setting and says how to fix it.
    """


class Interrupted(Exception):
    """Raised when SIGINT/SIGTERM arrives: the last completed epoch is already saved."""


def __getattr__(name: str):
    # PEP 562: torch and Hydra are imported when the API is first used, not by `import kdrun`.
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kdrun' has no attribute {name!r}")
