"""User-facing messages and options of ``nnunet-ext aggregate`` and ``nnunet-ext evaluate`` (from a walkthrough)."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from nnunet_ext.cli import main
from nnunet_ext.dataset_conversion.aggregate_datasets import grouped_folds
from nnunet_ext.dataset_conversion.nnunet_raw import NnUNetRawWriter

LABELS = {"background": 0, "myelin": 1, "axon": 2}


def _tiny_dataset(raw, dataset_id, name, subjects, labels=LABELS):
    rng = np.random.default_rng(dataset_id)
    with NnUNetRawWriter(raw, dataset_id, name, labels) as writer:
        for subject in subjects:
            writer.add_case(rng.integers(0, 255, (16, 16)).astype(np.uint8),
                            rng.integers(0, len(labels), (16, 16)).astype(np.uint8), subject=subject)
        return writer.finish()


def test_aggregate_labels_and_label_map_take_inline_json_or_a_file(tmp_path, capsys):
    raw = tmp_path / "raw"
    _tiny_dataset(raw, 71, "A", [f"s{i}" for i in range(5)])
    _tiny_dataset(raw, 72, "B", [f"t{i}" for i in range(5)], labels={**LABELS, "vessel": 3})
    common = ["71", "72", "--raw", str(raw), "--folds", "2"]
    labels = '{"background":0,"myelin":1,"axon":2,"unmyelinated axon":3}'
    label_map = '{"Dataset072_B": {"vessel": "unmyelinated axon"}}'
    assert main(["aggregate", *common, "-d", "73", "-n", "Inline", "--labels", labels, "--label-map", label_map]) == 0
    dataset = json.loads((raw / "Dataset073_Inline" / "dataset.json").read_text())
    assert dataset["labels"] == json.loads(labels)
    # a path still works
    (tmp_path / "labels.json").write_text(labels)
    (tmp_path / "map.json").write_text(label_map)
    assert main(["aggregate", *common, "-d", "74", "-n", "Files", "--labels", str(tmp_path / "labels.json"),
                 "--label-map", str(tmp_path / "map.json")]) == 0
    assert json.loads((raw / "Dataset074_Files" / "dataset.json").read_text())["labels"] == json.loads(labels)
    capsys.readouterr()
    # bad inline JSON: the option and the parser's message, not "No such file"
    assert main(["aggregate", *common, "-d", "75", "-n", "Bad", "--labels", '{"background": 0, "myelin": }']) == 1
    error = capsys.readouterr().err
    assert "--labels '{\"background\": 0, \"myelin\": }': not valid JSON (Expecting value" in error
    assert "No such file" not in error
    assert main(["aggregate", *common, "-d", "75", "-n", "Bad", "--label-map", "{vessel: background}"]) == 1
    assert "--label-map '{vessel: background}': not valid JSON" in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[0, 1, 2]")
    assert main(["aggregate", *common, "-d", "75", "-n", "Bad", "--labels", str(tmp_path / "list.json")]) == 1
    assert "list.json (--labels): labels must be a JSON object {...}, got list" in capsys.readouterr().err
    assert not (raw / "Dataset075_Bad").exists()


def test_aggregate_help_says_inline_json_or_file(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["aggregate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--label-map JSON label renaming per source, inline JSON or a JSON file" in text
    assert "--labels JSON labels of the result, inline JSON or a JSON file" in text


def test_too_few_groups_advises_a_finer_grouping_than_the_one_given():
    import pandas as pd

    cases = pd.DataFrame({"case_id": [f"c{i}" for i in range(12)], "source": ["A"] * 8 + ["B"] * 4,
                          "group": [f"a{i // 2}" for i in range(8)] + ["b0", "b0", "b1", "b1"]})
    with pytest.raises(ValueError, match=r"B: only 2 group\(s\).*or group it by sample or case \(--group-by B=sample\)"):
        grouped_folds(cases, n_folds=3, group_choice={"A": "subject", "B": "subject"})
    with pytest.raises(ValueError) as caught:
        grouped_folds(cases, n_folds=3, group_choice={"A": "subject", "B": "sample"})
    assert "use fewer folds (--folds), or group it by case (--group-by B=case)" in str(caught.value)
    assert "B=sample" not in str(caught.value)
    # every non-default choice is named again: pairs reset the sources they leave out to subject
    with pytest.raises(ValueError, match=r"\(--group-by A=sample B=case\)"):
        grouped_folds(cases, n_folds=3, group_choice={"A": "sample", "B": "sample"})
    with pytest.raises(ValueError) as caught:
        grouped_folds(cases, n_folds=3, group_choice={"A": "case", "B": "case"})
    assert "already grouped by case (--group-by B=case), so use fewer folds (--folds)" in str(caught.value)


def test_aggregate_cli_with_the_grouping_already_given(tmp_path, capsys):
    raw = tmp_path / "raw"
    _tiny_dataset(raw, 81, "A", [f"s{i}" for i in range(5)])
    _tiny_dataset(raw, 82, "PHU", ["x", "x", "x", "y", "y"])  # no samples: by sample is still two groups
    assert main(["aggregate", "81", "82", "--raw", str(raw), "-d", "83", "-n", "AGG3",
                 "--group-by", "Dataset082_PHU=sample"]) == 1
    error = capsys.readouterr().err
    assert "Dataset082_PHU: only 2 group(s)" in error and "(--group-by Dataset082_PHU=case)" in error
    assert "Dataset082_PHU=sample" not in error


def _bids_reference(root):
    micr = root / "sub-01" / "micr"
    labels = root / "derivatives" / "labels" / "sub-01" / "micr"
    micr.mkdir(parents=True)
    labels.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(micr / "sub-01_sample-a_SEM.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(labels / "sub-01_sample-a_SEM_seg-axonmyelin-manual.png")
    return root


def test_plain_evaluate_against_bids_or_astih_says_what_to_do(tmp_path, capsys):
    from nnunet_ext.evaluation.cli import fibre_only_layout

    pred = tmp_path / "pred"
    pred.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(pred / "sub-01_sample-a_SEM.png")
    bids = _bids_reference(tmp_path / "bids")
    assert main(["evaluate", str(pred), str(bids), "--no-plot"]) == 1
    error = capsys.readouterr().err
    assert f"{bids}: GT_DIR is a BIDS dataset: pixel Dice/IoU/HD95 need nnU-Net label folders" in error
    assert "add --fibres" in error and "--morphometrics" in error and "no file nnU-Net can read" not in error
    assert not (pred / "evaluation.csv").exists()

    # ASTIH test folder: masks beside their images, or in subfolders only
    astih = tmp_path / "astih"
    astih.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(astih / "demo.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(astih / "demo_seg-axonmyelin-manual.png")
    assert fibre_only_layout(astih) == "an ASTIH test folder"
    assert main(["evaluate", str(pred), str(astih), "--no-plot"]) == 1
    assert "GT_DIR is an ASTIH test folder: pixel Dice/IoU/HD95" in capsys.readouterr().err
    nested = tmp_path / "nested" / "sem"
    nested.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(nested / "demo_seg-axonmyelin-manual.png")
    assert fibre_only_layout(tmp_path / "nested") == "an ASTIH test folder"
    # a flat folder of masks alone, and an nnU-Net label folder, are scored as before
    assert fibre_only_layout(nested) is None
    assert fibre_only_layout(pred) is None


def test_evaluate_help_is_wrapped_and_explains_output_per_mode(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    for command in ("evaluate", "tracing-metrics"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert max(len(line) for line in text.splitlines()) <= 100, command
        if command == "evaluate":
            assert "\n\nEmpty masks: a class absent" in text  # paragraphs kept
            assert "nnU-Net" in text  # not broken at its hyphen
            flat = " ".join(text.split())
            assert re.search(r"With --fibres/--morphometrics only its name is used, as the prefix <out> of "
                             r"<out>_fibres\.csv", flat)
            assert "the CSV itself is not written" in flat
