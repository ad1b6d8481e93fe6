"""`leukoml prepare`: index a dataset once (decode, copies, siblings) and log its card.

A new dataset's first study otherwise pays the index inside its budget; run
this first and every later train or search reuses the cache.
"""

from __future__ import annotations

from leukoml import names
from leukoml.commands._options import _bool, _int


def add_prepare(sub) -> None:
    from leukoml.data.spec import CROPS, SIBLINGS

    p = sub.add_parser("prepare", help="index a dataset once: decode, copies, siblings, "
                                       "split; log its dataset card to MLflow")
    p.add_argument("--data", required=True,
                   help="dataset folder (class folders, optionally inside train/val/test), "
                        "or 'synthetic'")
    p.add_argument("--image-size", type=_int, default=96,
                   help="decode at this size, px (siblings and copies serve every size)")
    p.add_argument("--crop", default="cell", choices=CROPS, help="cell: centre on the leukocyte")
    p.add_argument("--group-by", default=SIBLINGS,
                   help="siblings (search them), none, a regex or a file,group CSV")
    p.add_argument("--seed", type=_int, default=0, help="the split's seed")
    p.add_argument("--follow-links", type=_bool, default=False,
                   help="read symlinks that point outside the folder")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args) -> int:
    import json

    from leukoml.data import check_source
    from leukoml.data.spec import DataSpec

    spec = DataSpec(source=args.data, image_size=args.image_size, crop=args.crop,
                    group_by=args.group_by, seed=args.seed, follow_links=args.follow_links)
    check_source(spec)  # a missing, empty or image-less folder stops here, before any run

    import mlflow

    from leukoml.data import prepare_dataset
    from leukoml.data.tracking import log_dataset_card
    from leukoml.tracking import start_run

    data = prepare_dataset(spec)
    with start_run() as run:
        mlflow.set_tags({names.TAG_ROLE: names.Role.PREPARE,
                         names.TAG_RUN_NAME: f"prepare-{data.root.name}"})
        card = log_dataset_card(data)
    print(json.dumps({k: card[k] for k in ("dataset", "images", "split", "siblings",
                                           "copy_pairs", "crop_cell_found", "skipped_files",
                                           "seconds")}, indent=1))
    print(f"dataset card logged to run {run.info.run_id}; train and search reuse this index")
    return 0
