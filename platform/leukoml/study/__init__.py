"""The study room: an Optuna study over backbones and training settings, tracked in MLflow.

`storage` (URLs, heartbeats), `queue` (the budget), `objective` (one trial =
one `train_and_log` call + pruning) and `search` (the entry point). May import
training, registry, config, data, locks, names and errors; nothing imports it
but the CLI and report.
"""

from leukoml.study.objective import Objective
from leukoml.study.queue import budget_used, fill_queue
from leukoml.study.search import SearchOutcome, promote_best, run_search
from leukoml.study.space import SearchSpace, load_search_space, parse_search_space
from leukoml.study.storage import DEFAULT_STORAGE, heartbeat_settings, open_storage

__all__ = [
    "DEFAULT_STORAGE",
    "Objective",
    "SearchOutcome",
    "budget_used",
    "fill_queue",
    "heartbeat_settings",
    "open_storage",
    "promote_best",
    "SearchSpace",
    "load_search_space",
    "parse_search_space",
    "run_search",
]
