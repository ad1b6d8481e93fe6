"""A lab's labelled images: class folders or a labels CSV, and the class mapping."""

from __future__ import annotations

import pytest
from helpers import KAGGLE, skip_without_real_data, write_image

from leukoml.errors import LeukomlError
from leukoml.external import map_classes, read_labelled
from leukoml.external.labelled import read_class_map

MODEL = ["EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL"]


def originals_like(root):
    """Images named by number, a CSV with numbers, blanks, two-label rows and a gap."""
    for n in (0, 1, 2, 3, 5, 7):
        write_image(root / "Original_Images" / f"BloodImage_{n:05d}.jpg")
    (root / "labels.csv").write_text(
        ",Image,Category\n"
        ",0,NEUTROPHIL\n"
        ",1,eosinophil\n"
        ",2,\n"                         # blank
        ",3,\"NEUTROPHIL, LYMPHOCYTE\"\n"  # two cells, two labels
        ",4,MONOCYTE\n"                 # no image 4
        ",5,BASOPHIL\n"                 # a class the model does not know
        ",7,\"NEUTROPHIL, NEUTROPHIL\"\n"  # two of one kind: one label
        ",0,NEUTROPHIL\n"               # a second row for image 0
    )
    return root


def test_a_labels_csv_names_images_by_number_and_sets_odd_rows_aside(tmp_path):
    found = read_labelled(originals_like(tmp_path / "lab"))
    assert found.source == "labels.csv"
    assert dict(zip(found.files, found.labels)) == {
        "Original_Images/BloodImage_00000.jpg": "NEUTROPHIL",
        "Original_Images/BloodImage_00001.jpg": "eosinophil",
        "Original_Images/BloodImage_00005.jpg": "BASOPHIL",
        "Original_Images/BloodImage_00007.jpg": "NEUTROPHIL",
    }
    assert dict(found.set_aside) == {"blank label": 1, "several labels in one row": 1,
                                     "no image file for the row": 1,
                                     "a second row for the same image": 1}
    assert "NEUTROPHIL, LYMPHOCYTE" in found.examples["several labels in one row"][0]


def test_class_folders_are_read_as_for_training(tmp_path):
    for name in ("Neutrophil", "band"):
        for i in range(2):
            write_image(tmp_path / "lab" / name / f"{i}.png")
    found = read_labelled(tmp_path / "lab")
    assert found.source == "class folders" and sorted(set(found.labels)) == ["Neutrophil", "band"]
    assert len(found.files) == 4


def test_names_map_case_insensitively_unknown_and_missing_classes_are_named():
    mapping = map_classes(["neutrophil", "Eosinophil", "BASOPHIL"], MODEL)
    assert mapping.to_model == {"BASOPHIL": None, "Eosinophil": 0, "neutrophil": 3}
    assert mapping.unknown == ["BASOPHIL"] and mapping.missing == ["LYMPHOCYTE", "MONOCYTE"]


def test_an_explicit_map_folds_subtypes_and_can_mark_a_class_unknown(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("band: neutrophil\nsegmented: NEUTROPHIL\nmonocyte: unknown\n")
    mapping = map_classes(["band", "segmented", "monocyte", "lymphocyte"], MODEL,
                          read_class_map(str(path)))
    assert mapping.to_model == {"band": 3, "segmented": 3, "monocyte": None, "lymphocyte": 1}


def test_a_map_to_a_class_the_model_lacks_is_refused_naming_it(tmp_path):
    path = tmp_path / "map.csv"
    path.write_text("external,model\nband,granulocyte\n")
    with pytest.raises(LeukomlError, match="'band' -> 'granulocyte': not a class of the model"):
        map_classes(["band"], MODEL, read_class_map(str(path)))


def test_no_class_in_common_stops_with_both_lists_side_by_side():
    with pytest.raises(LeukomlError) as error:
        map_classes(["basophil", "blast"], MODEL)
    text = str(error.value)
    assert "folder: basophil, blast" in text and "model:  EOSINOPHIL, LYMPHOCYTE" in text


def test_a_csv_without_a_label_column_names_the_columns_it_found(tmp_path):
    write_image(tmp_path / "lab" / "a.png")
    (tmp_path / "lab" / "labels.csv").write_text("file,diagnosis\na.png,x\n")
    with pytest.raises(LeukomlError, match="one of label, class, category; found file, diagnosis"):
        read_labelled(tmp_path / "lab")


def test_the_kaggle_originals_csv_is_read_with_its_oddities_counted():
    skip_without_real_data()
    found = read_labelled(KAGGLE.parent / "kaggle-blood-cells-originals")
    assert len(found.files) + sum(found.set_aside.values()) == 411  # every row accounted for
    assert found.set_aside["blank label"] == 44
    assert found.set_aside["several labels in one row"] >= 5
    assert "BASOPHIL" in found.labels
