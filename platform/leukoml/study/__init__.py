"""The study room: an Optuna study over backbones and training settings, tracked in MLflow.

`space` and `dimensions` (the YAML schema), `inputs` (checks before any work),
`storage` (URLs, heartbeats), `queue` (the budget), `objective` (one trial =
one `train_and_log` call + pruning), `search` (the entry point) and
`ensemble` (the best trials averaged). May import training, registry,
serving, evaluation, backbones, config, data, tracking, locks, names and
errors; nothing imports it but the CLI and report.
"""

from leukoml._lazy import lazy_exports

# Lazily (PEP 562): `leukoml.study.space` and `.inputs` check a command's input
# before optuna and mlflow are imported.
__getattr__, __all__ = lazy_exports(__name__, {
    ".inputs": ("check_search_inputs",),
    ".objective": ("Objective",),
    ".queue": ("budget_used", "fill_queue"),
    ".search": ("SearchOutcome", "promote_best", "run_search"),
    ".space": ("SearchSpace", "load_search_space", "parse_search_space"),
    ".storage": ("DEFAULT_STORAGE", "heartbeat_settings", "open_storage"),
})
