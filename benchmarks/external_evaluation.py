"""A Kaggle-trained model scored on images it never saw: `-e evaluate`'s figures.

The model is the best trial of `kaggle_accuracy.py`'s study (trained on
kaggle-blood-cells TRAIN, validated on a sibling-grouped carve of it), read
from that benchmark's scratch store. It is scored, as `mlflow run . -e
evaluate` scores it, on

- `kaggle-blood-cells/TEST_SIMPLE`: the 71 held-out originals, un-augmented;
- `kaggle-blood-cells-originals`: the 367 640x480 source fields with
  `labels.csv` (blank and two-label rows set aside; BASOPHIL unknown to the model),

beside the model's own test score on the official TEST split, with the
verdict paragraph a lab would read.

    python benchmarks/external_evaluation.py [--store /tmp/leukoml-kaggle-accuracy-...]

Writes benchmarks/results/external_evaluation.json.
"""

from __future__ import annotations

import argparse
import json
import time

import mlflow
from _common import KAGGLE, RESULTS, machine, print_table, write_result
from _study import scratch_stores

from leukoml import names
from leukoml.external import EvaluateRequest, plan_evaluation
from leukoml.external.score import log_result, score
from leukoml.serving import find_serving_model

SETS = {"TEST_SIMPLE": KAGGLE / "TEST_SIMPLE",
        "originals": KAGGLE.parent / "kaggle-blood-cells-originals"}


def evaluate(model_uri: str, data: str) -> dict:
    started = time.perf_counter()
    plan = plan_evaluation(EvaluateRequest(model_uri, data))
    result, model, predictions = score(plan)
    with mlflow.start_run(run_name=f"evaluate-{plan.images.root.name}") as run:
        log_result(plan, result, model, predictions)
    metrics = result.evaluation.metrics
    keep = [k for k in metrics if not k.startswith(f"{names.EXTERNAL}_precision")]
    return {"run_id": run.info.run_id, "seconds": round(time.perf_counter() - started, 1),
            "images": len(plan.images.files), "set_aside": dict(plan.images.set_aside),
            "unknown_classes": plan.mapping.unknown, "missing_classes": plan.mapping.missing,
            **{k: round(metrics[k], 4) for k in keep},
            **{k: round(v, 4) for k, v in result.calibration.items()
               if not k.startswith(f"{names.EXTERNAL}_roc_auc_") or k.endswith("macro")},
            "verdict": result.verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    previous = json.loads((RESULTS / "kaggle_accuracy.json").read_text())
    parser.add_argument("--store", default=previous.get("store", ""),
                        help="kaggle_accuracy.py's scratch folder (default: its last run's)")
    parser.add_argument("--model", default="",
                        help="a model URI (default: the served model of that study's best trial)")
    args = parser.parse_args()
    scratch_stores("kaggle-accuracy", args.store)
    args.model = args.model or find_serving_model(previous["search"]["best_run_id"])
    config = mlflow.models.get_model_info(args.model).metadata["leukoml"]
    out = {"machine": machine(), "model": args.model, "store": args.store,
           "model_backbone": "+".join(m["backbone"] for m in config["members"]),
           "own_test_scores": config["test_scores"], "sets": {}}
    for name, folder in SETS.items():
        out["sets"][name] = evaluate(args.model, str(folder))
        write_result("external_evaluation", out)
    rows = [{"what": "own test split (official TEST)", **config["test_scores"]}]
    rows += [{"what": name, names.TEST_ACCURACY: r[f"{names.EXTERNAL}_accuracy"],
              names.TEST_MACRO_F1: r[f"{names.EXTERNAL}_macro_f1"],
              "ece": r.get(f"{names.EXTERNAL}_ece", float("nan"))}
             for name, r in out["sets"].items()]
    print_table(rows, [("", "what"), ("accuracy", names.TEST_ACCURACY, ".4f"),
                       ("macro-F1", names.TEST_MACRO_F1, ".4f"), ("ECE", "ece", ".3f")])
    for name, r in out["sets"].items():
        print(f"{name}: {r['verdict']}")


if __name__ == "__main__":
    main()
