"""benchmarks/make_readme.py: the opening table's rows and verdicts, and no machine paths."""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_readme", REPO / "benchmarks" / "make_readme.py")
make_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_readme)
H = make_readme.Headline

HEADLINES = {
    "detector": [
        H("recall", "pairs.recall", ("plain script", "script.recall"), "targets.recall"),
        H("seconds, 100 images", "rows[images=100&stage=search].seconds",
          ("decoding", "rows[images=100&stage=decode].seconds"), 3, "lower"),  # on the target
        H("val leak", "leak", None, "targets.leak", "lower"),
    ],
    "thin": [
        H("accuracy", "test.accuracy", ("author", "author_accuracy")),
        H("peak memory", "test.peak_gb", None, 4.0, "lower"),
    ],
}


def _write(folder: Path, name: str, result: dict) -> None:
    (folder / f"{name}.json").write_text(json.dumps(result))


def _rows(readme: str) -> dict[tuple[str, str], list[str]]:
    """The opening table as {(benchmark, measured): the other cells}."""
    table = readme.split("\n\n")[2].splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    return {(re.sub(r"\[(\w+)\].*", r"\1", c[0]), c[1]): c[2:] for c in cells}


def test_table_rows_verdicts_and_no_absolute_paths(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    home_path = "/home/someone/.cache/leukoml/fields"
    data_path = f"{REPO.parent}/shared/data/cells"
    temp_path = f"{tempfile.gettempdir()}/leukoml-fail-fast-x/bad.yaml"
    _write(results, "detector", {
        "machine": {"cpu": "Test CPU", "cores": 2, "load_average_1m_at_start": 0.5},
        "data": data_path, "fields": home_path,
        "pairs": {"recall": 0.97}, "script": {"recall": 0.5}, "leak": 0.04,
        "targets": {"recall": 0.95, "leak": 0.02},
        "rows": [{"images": 100, "stage": "decode", "seconds": 2.0},
                 {"images": 100, "stage": "search", "seconds": 3.0,
                  "message": f"error: {temp_path}: search space: 'optimizer'"}],
        "load_average_1m_at_end": 0.75})
    _write(results, "thin", {"author_accuracy": 0.87, "test": {"accuracy": 0.9}})
    output = tmp_path / "README.md"

    make_readme.main(results, output, HEADLINES)

    readme = output.read_text()
    rows = _rows(readme)
    machine = "Test CPU, 2 cores, load 0.50–0.75"
    assert rows[("detector", "recall")][:5] == ["0.97", "0.5 (plain script)", "better", "≥ 0.95",
                                                "meets"]
    assert rows[("detector", "recall")][5] == machine
    assert rows[("detector", "seconds, 100 images")][:5] == ["3", "2 (decoding)", "worse", "≤ 3",
                                                             "meets"]
    assert rows[("detector", "val leak")][:5] == ["0.04", "", "", "≤ 0.02", "misses"]
    assert rows[("thin", "accuracy")][:5] == ["0.9", "0.87 (author)", "better", "", "no target"]
    assert rows[("thin", "peak memory")][:5] == ["not measured", "", "", "≤ 4", "not measured"]
    assert rows[("thin", "peak memory")][5] == "not recorded"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", cells[6]) for cells in rows.values())

    for path in (home_path, data_path, temp_path, str(REPO.parent) + "/"):
        assert path not in readme
    assert "~/.cache/leukoml/fields" in readme
    assert "shared/data/cells" in readme
    assert "leukoml-fail-fast-x/bad.yaml" in readme
    assert "## detector" in readme and "## thin" in readme


def test_declared_benchmark_without_a_result_file_is_listed_as_not_measured(tmp_path):
    output = tmp_path / "README.md"

    make_readme.main(tmp_path, output, {"thin": HEADLINES["thin"]})

    rows = _rows(output.read_text())
    assert rows[("thin", "accuracy")][0] == "not measured"
    assert rows[("thin", "accuracy")][6] == "no result file yet"
    assert "## thin" not in output.read_text()
