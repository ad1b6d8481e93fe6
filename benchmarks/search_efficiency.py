"""Search efficiency: the same study budget without pruning, with median and with Hyperband.

All three studies use a seeded random sampler, so they propose the same
configurations in the same order; only the pruner differs. Reported: epochs
spent (pruned trials count the epochs they ran), wall time, and the best
objective reached. The target: at least 2x fewer epochs for the same best.

    python benchmarks/search_efficiency.py [--n-trials 12] [--data synthetic]

Prints a table and writes benchmarks/results/search_efficiency.json.
"""

from __future__ import annotations

import argparse

from _common import machine, print_table, write_result
from _study import run_study, scratch_stores, spent

PRUNERS = {
    "none": {"name": "none"},
    "median": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2},
    "hyperband": {"name": "hyperband", "min_resource": 2, "reduction_factor": 3},
}


def space(pruner: dict, n_trials: int, max_epochs: int, image_size: int) -> dict:
    return {
        "objective": {"metric": "val_macro_f1", "direction": "maximize"},
        "tiers": {"low": ["Asghar2022CNN", "MobileNetV3Small", "MobileNetV2"]},
        "image_size": image_size, "max_image_size": image_size, "weights": "none",
        "max_epochs": max_epochs, "learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
        "batch_size": [32], "patience": 3,  # early stopping as usual: pruning saves on top of it
        "sampler": {"name": "random", "seed": 0}, "pruner": pruner, "n_trials": n_trials,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    info, rows = machine(), []
    for name, pruner in PRUNERS.items():
        _, storage = scratch_stores(f"efficiency-{name}")
        study, seconds = run_study(space(pruner, args.n_trials, args.max_epochs, args.image_size),
                                   args.data, f"efficiency-{name}", storage)
        epochs, states = spent(study)
        rows.append({"pruner": name, "epochs": epochs, "wall_seconds": round(seconds, 1),
                     "best_objective": round(study.best_value, 4),
                     "best_trial": study.best_trial.number,
                     "pruned": states["PRUNED"], "complete": states["COMPLETE"],
                     "failed": states["FAIL"]})
    base = rows[0]
    for row in rows:
        row["epochs_saved_factor"] = round(base["epochs"] / max(row["epochs"], 1), 2)
    result = {"machine": info, "data": args.data, "n_trials": args.n_trials,
              "max_epochs": args.max_epochs, "image_size": args.image_size, "rows": rows}
    write_result("search_efficiency", result)
    print(f"{info['cpu']}, {info['cores']} cores; {args.n_trials} trials, up to "
          f"{args.max_epochs} epochs, {args.data} at {args.image_size} px")
    print_table(rows, [("pruner", "pruner"), ("epochs", "epochs"), ("x fewer", "epochs_saved_factor"),
                       ("wall s", "wall_seconds"), ("best val_macro_f1", "best_objective"),
                       ("pruned", "pruned")])


if __name__ == "__main__":
    main()
