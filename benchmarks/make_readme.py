"""Write benchmarks/README.md from benchmarks/results/*.json, so figures never drift.

It opens with one table, a row per headline figure declared in HEADLINES (leukoml's figure,
the anchor measured in the same run, the target, machine and date), then each result in
full, without the machine's absolute paths. Run `python benchmarks/make_readme.py` after
any benchmark.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import tempfile
from datetime import date
from pathlib import Path
from typing import NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
_SKIP = {"machine", "load_average_1m_at_end", "predictions"}  # predictions: per image
_COLUMNS = ("benchmark", "measured", "leukoml", "anchor", "vs anchor", "target", "verdict",
            "machine", "date")
_VERSUS, _SIGN = {1: "better", 0: "equal", -1: "worse"}, {"higher": "≥ ", "lower": "≤ "}


class Headline(NamedTuple):
    """A row of the opening table. A path is dotted keys, `[key=value&key=value]` picking the
    list item with those values; an anchor (what it is, path or number); a target, path or
    number; better: "higher", "lower" or None (no direction)."""
    measured: str
    figure: str
    anchor: tuple[str, str | float] | None = None
    target: str | float | None = None
    better: str | None = "higher"


H = Headline
_LEFT, _PAIRS = "leftover_siblings.", "pairwise_by_source."
_S17, _S100 = "rows[images=17092].", "rows[images=100000]."
_AUTHOR = ("data set author", "author_test_accuracy")
_OWN_TEST = ("own TEST", "own_test_scores.test_accuracy")
_CASE = "time_to_error[case={}].median_seconds"
_SERVE = "results[where={}&images_per_request={}].{}"
_GROUP = {"random": "rows[validation=random (stratified)].",
          "grouped by file-name id": r"rows[validation=grouped by ^_(\d+)_]."}

HEADLINES: dict[str, list[Headline]] = {
    "siblings": [
        H("pair precision, same source field", f"{_PAIRS}precision", None, "targets.precision"),
        H("pair recall, same source field", f"{_PAIRS}recall", None, "targets.recall"),
        H("val images with a sibling in train, val carved by sibling group",
          f"{_LEFT}grouped by detected siblings.val_with_train_sibling",
          ("val carved at random", f"{_LEFT}random.val_with_train_sibling"),
          "targets.val_with_train_sibling", "lower"),
        H("seconds of the sibling search, all Kaggle images", "detector.seconds", better="lower"),
    ],
    "siblings_scale": [
        H("search seconds, 17,092 images without siblings", f"{_S17}siblings.seconds",
          ("decoding them", f"{_S17}decode.seconds"), "targets.seconds_at_17k_idle", "lower"),
        H("search time / decode time, 2,000 images", "rows[images=2000].ratio_to_decode",
          better="lower"),
        H("search time / decode time, 17,092 images", f"{_S17}ratio_to_decode", None,
          "targets.ratio_to_decode_at_17k", "lower"),
        H("growth exponent of the search time, 10,000 images up", "growth_exponent_10k_up.siblings",
          ("decoding's", "growth_exponent_10k_up.decode"), "targets.growth_exponent", "lower"),
        H("peak RSS (GB) of the search, 100,000 images", f"{_S100}siblings.peak_rss_gb",
          ("decoding", f"{_S100}decode.peak_rss_gb"), "targets.peak_rss_gb_at_100k", "lower"),
        H("longest silence of the search's log (s), 100,000 images",
          f"{_S100}siblings.longest_log_silence_seconds", None,
          "targets.longest_log_silence_seconds", "lower"),
    ],
    "kaggle_accuracy": [
        H("TEST accuracy, best trial of the cpu.yaml search", "search.test_accuracy", _AUTHOR),
        H("TEST accuracy, ensemble of that search", "ensemble.test_accuracy", _AUTHOR),
        H("TEST accuracy, best trial of the selection study", "selection_study.test_accuracy",
          _AUTHOR),
        H("TEST accuracy, `leukoml train` defaults", "train_defaults.test_accuracy", _AUTHOR),
    ],
    "peers": [H(f"TEST accuracy, same budget, vs {peer}", "arms[arm=leukoml].test_accuracy",
                (peer, f"arms[arm={arm}].test_accuracy"))
              for peer, arm in [("KerasTuner", "kerastuner"), ("a plain Keras script", "script"),
                                ("AutoKeras", "autokeras")]],
    "external_evaluation": [
        H(f"accuracy on {images}", f"sets.{name}.external_accuracy", _OWN_TEST)
        for images, name in [("TEST_SIMPLE (external images)", "TEST_SIMPLE"),
                             ("the originals (optimistic: see caveat)", "originals")]],
    "paper_claims": [
        H(f"TEST accuracy, paper's CNN, {recipe}'s recipe, {split}",
          f"rows[recipe={recipe}&split={split}].test_accuracy", ("paper", "paper_test_accuracy"))
        for recipe, split in [("paper", "random 70/20/10 of TRAIN+TEST (paper)"),
                              ("paper", "official TRAIN -> TEST"),
                              ("leukoml", "official TRAIN -> TEST")]],
    "robustness": [
        *(H(f"seconds to a clear error: {what}", _CASE.format(case),
            ("`import tensorflow`", _CASE.format("anchor: import tensorflow")), None, "lower")
          for what, case in [("missing data folder", "search --data /no/such/folder"),
                             ("unknown optimiser", "search, unknown optimiser in the space"),
                             ("unknown backbone", "train --backbone NoSuchNet"),
                             ("unreachable PostgreSQL", "search, unreachable PostgreSQL storage"),
                             ("missing data folder via `mlflow run`",
                              "mlflow run . -e search -P data=/no/such/folder")]),
        H("MLflow runs left behind by the bad inputs",
          "time_to_error[case=MLflow runs left behind by all the bad inputs].runs", None, 0,
          "lower"),
        H("epochs recomputed after a kill mid-trial", "resume.epochs_recomputed",
          ("without the backup", "resume.epochs_recomputed_without_backup"), None, "lower"),
    ],
    "group_split": [
        H(f"val macro-F1, val carved {how} (vs TEST: the overstatement)", f"{row}val_macro_f1",
          ("its TEST macro-F1", f"{row}test_macro_f1"), None, None) for how, row in _GROUP.items()],
    "trainer_throughput": [
        *(H(f"images/s of a leukoml trial, {net}", f"rows[backbone={net}].trial_images_per_s",
            ("bare model.fit", f"rows[backbone={net}].bare_fit_images_per_s"))
          for net in ("Asghar2022CNN", "MobileNetV3Small", "EfficientNetB0")),
        H("seconds to reuse the decode cache", "decode_cache_reuse_s",
          ("building it", "decode_cache_build_s"), None, "lower"),
    ],
    "search_efficiency": [
        H(f"{what}, {pruner} pruner", f"rows[pruner={pruner}].{key}",
          ("no pruner", f"rows[pruner=none].{key}"), None, better)
        for pruner in ("median", "hyperband")
        for what, key, better in [("epochs of the study", "epochs", "lower"),
                                  ("best objective", "best_objective", "higher")]],
    "serving": [
        H(f"{what} over HTTP (`mlflow models serve`), {n} per request",
          _SERVE.format("mlflow models serve (HTTP)", n, key),
          ("in-process predict", _SERVE.format("in-process predict", n, key)), None, better)
        for what, key, n, better in [("images/s", "images_per_s", 1, "higher"),
                                     ("p95 ms", "p95_ms", 1, "lower"),
                                     ("images/s", "images_per_s", 32, "higher")]],
}


def _walk(data, path: str) -> list:
    """The nodes from `data` down to the value at `path`; [] if a step is missing or None."""
    nodes = [data]
    for token in re.findall(r"\[[^\]]*\]|[^.\[\]]+", path):
        node = nodes[-1]
        if token.startswith("[") and isinstance(node, list):
            wanted = [condition.partition("=")[::2] for condition in token[1:-1].split("&")]
            node = next((item for item in node if isinstance(item, dict) and all(
                str(item.get(key)) == value for key, value in wanted)), None)
        else:
            node = node.get(token) if isinstance(node, dict) else None
        if node is None:
            return []
        nodes.append(node)
    return nodes


def _relative(path: str) -> str:
    """An absolute path of the machine made harmless: relative to the repository, ~, $TMPDIR."""
    if path.startswith(f"{REPO.parent}/"):
        return os.path.relpath(path, REPO)
    home = re.match(r"/(home|Users)/[^/]+(?=/|$)|/root(?=/|$)", path)
    if home:
        return "~" + path[home.end():]
    tmp = tempfile.gettempdir()
    return "$TMPDIR" + path[len(tmp):] if path.startswith(f"{tmp}/") else path


def _cell(value) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:,.0f}" if abs(value) >= 10000 else (
            f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}")
    if isinstance(value, dict):  # in one cell, nested ones in brackets; a large one stays out
        text = " · ".join(f"{k} ({_cell(v)})" if isinstance(v, dict) else f"{k} {_cell(v)}"
                          for k, v in value.items())
        return text if len(text) <= 300 else "(in the JSON)"
    text = json.dumps(value, default=str)[:120] if isinstance(value, list) else str(value)
    text = re.sub(r"(?<![\w.:/~$])/[^\s'\",;()\[\]]+", lambda m: _relative(m.group()), text)
    return text.replace("|", "\\|").replace("\n", " ")


def _machine(nodes: list) -> str:
    """cpu, cores and load average of the machine nearest to a figure."""
    node = next((n for n in reversed(nodes) if isinstance(n, dict) and n.get("machine")), None)
    if node is None:
        return "not recorded"
    if isinstance(node["machine"], str):  # a row that names only its cpu
        return node["machine"]
    info = node["machine"]
    start = info.get("load_average_1m_at_start")
    end = node.get("load_average_1m_at_end", info.get("load_average_1m_at_end"))
    load = "load not kept" if start is None else f"load {start:.2f}" + (
        "" if end is None else f"–{end:.2f}")
    return f"{info.get('cpu')}, {info.get('cores')} cores, {load}"


def _compare(figure, other, better: str | None) -> int | None:
    """1 if `figure` is better than `other`, -1 if worse, 0 if equal, None if not comparable."""
    if better not in ("higher", "lower") or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (figure, other)):
        return None
    return (1 if better == "higher" else -1) * ((figure > other) - (figure < other))


def _dated(path: Path, data: dict) -> str:
    """The JSON's own date, else its last commit's, else the file's modification day."""
    committed = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name],
                               cwd=path.parent, capture_output=True, text=True,
                               check=False).stdout.strip()
    return str(data.get("date") or committed
               or date.fromtimestamp(path.stat().st_mtime).isoformat())


def headline_rows(name: str, data: dict, rows: list[Headline], when: str) -> list[str]:
    """The opening table's rows for one result; a figure missing from it is "not measured"."""
    link = f"[{name}](#{name})" if data else name
    if not rows:
        return [f"| {link} | no headline declared in make_readme.py | | | | | | "
                + f"{_machine([data])} | {when} |"]
    lines = []
    for row in rows:
        nodes = _walk(data, row.figure)
        figure = nodes[-1] if nodes else None
        anchor_is, anchor_path = row.anchor or ("", None)
        anchor, target = (spec if spec is None or isinstance(spec, (int, float)) else
                          (_walk(data, spec) or [None])[-1] for spec in (anchor_path, row.target))
        met = _compare(figure, target, row.better)
        cells = [link, row.measured, "not measured" if figure is None else _cell(figure),
                 f"{'not measured' if anchor is None else _cell(anchor)} ({anchor_is})"
                 if row.anchor else "",
                 _VERSUS.get(_compare(figure, anchor, row.better), ""),
                 "" if target is None else _SIGN.get(row.better, "") + _cell(target),
                 "not measured" if figure is None else "no target" if met is None
                 else "meets" if met >= 0 else "misses", _machine(nodes or [data]), when]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _figures(data: dict, prefix: str, groups: dict, tables: list) -> None:
    """Scalars into `groups` by the path of the dict holding them, lists of rows into `tables`."""
    for key, value in data.items():
        if key in _SKIP:
            continue
        if isinstance(value, dict):
            _figures(value, f"{prefix}{key}.", groups, tables)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((f"{prefix}{key}", value))
        else:
            groups.setdefault(prefix[:-1], []).append(f"{key}: {_cell(value)}")


def _table(rows: list[dict]) -> list[str]:
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in _SKIP]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + [
        "| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]


def section(name: str, data: dict) -> list[str]:
    """What the script measures, its machine(s), every figure grouped by the dict holding it."""
    script = HERE / f"{name}.py"  # its docstring's first paragraph says what it measures
    doc = (ast.get_docstring(ast.parse(script.read_text())) if script.is_file() else "") or ""
    lines = [f"## {name}", "", doc.split("\n\n")[0].replace("\n", " "), "",
             f"`python benchmarks/{name}.py`; machine: {_machine([data])}.", ""]
    phases = [f"`{key}`: {_machine([data, value])}" for key, value in data.items()
              if isinstance(value, dict) and "machine" in value]
    if phases:  # a result written phase by phase: each phase ran on its own machine
        lines += ["Phases with their own machine: " + "; ".join(phases) + ".", ""]
    groups: dict[str, list[str]] = {}
    tables: list = []
    _figures(data, "", groups, tables)
    lines += ["| | |", "|---|---|", *(f"| {k} | {' · '.join(v)} |" for k, v in groups.items())]
    for table_name, rows in tables:
        lines += ["", f"**{table_name}**", "", *_table(rows)]
    return [*lines, ""]


def main(results: Path = HERE / "results", output: Path = HERE / "README.md",
         headlines: dict[str, list[Headline]] = HEADLINES) -> None:
    paths = {p.stem: p for p in sorted(results.glob("*.json"))}
    found = {name: json.loads(path.read_text()) for name, path in paths.items()}
    names = list(headlines) + sorted(set(found) - set(headlines))
    intro = ("Generated by `benchmarks/make_readme.py` from `results/*.json`; do not edit by "
             "hand. Each row sets leukoml's figure beside the anchor measured in the same run "
             "(a plain script, the peer tool, the paper's figure, decoding the same images) "
             "and the target where the result holds one: compare within a row, not with an "
             "absolute time from another box. The date is the result file's last commit.")
    lines = ["# Benchmarks", "", intro, "", "| " + " | ".join(_COLUMNS) + " |",
             "|" + "---|" * len(_COLUMNS)]
    for name in names:
        when = _dated(paths[name], found[name]) if name in found else "no result file yet"
        lines += headline_rows(name, found.get(name, {}), headlines.get(name, []), when)
    lines.append("")
    for name in (n for n in names if n in found):
        lines += section(name, found[name])
    output.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {output} ({len(found)} results)")


if __name__ == "__main__":
    main()
