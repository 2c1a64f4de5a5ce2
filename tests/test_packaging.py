"""A regular (non-editable) install carries the trainer shim folder and the console command."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_shim_and_entry_point(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("nnunet_ext-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "nnunet-ext = nnunet_ext.cli:main" in archive.read(entry_points).decode()
    assert "nnunet_ext/trainers/nnunet_search_path/nnunet_ext_trainer_registry.py" in names
    for package in ("dataset_conversion", "trainers", "morphometrics", "evaluation"):
        assert f"nnunet_ext/{package}/__init__.py" in names
