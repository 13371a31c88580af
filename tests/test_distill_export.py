"""The distillation export and its validation metrics land together (issue 21.5): a run killed
after its last checkpoint, before the final export, resumes and writes the file with the metrics
of its weights (it had none: the metrics lived only in the killed process)."""
from __future__ import annotations

import json

import pytest
from mmengine.hooks import Hook
from test_distill_train import photos, run, tiny_cfg  # noqa: F401  (photos: the fixture)

from brixel_plugins.files.upsampler_file import read_upsampler_file


class Killed(Exception):
    pass


class KillBeforeExport(Hook):
    priority = "NORMAL"  # before ExportUpsamplerHook ("LOW") writes upsampler.safetensors

    def after_train(self, runner):
        raise Killed()


def test_export_after_a_kill_before_it_carries_the_final_metrics(photos, tmp_path):  # noqa: F811
    cfg = dict(max_iters=2, ckpt_interval=1, val_interval=2)
    with pytest.raises(Killed):
        run(tiny_cfg("lift", photos, tmp_path, **cfg), KillBeforeExport())
    assert (tmp_path / "iter_2.pth").is_file() and not (tmp_path / "upsampler.safetensors").exists()
    final = json.loads((tmp_path / "val_metrics.json").read_text())[-1]
    assert final["iteration"] == 2

    run(tiny_cfg("lift", photos, tmp_path, resume=True, **cfg))
    extra = read_upsampler_file(tmp_path / "upsampler.safetensors")[1]["extra"]
    assert extra["iterations"] == 2 and extra["val_metrics"]["iteration"] == 2
    assert extra["val_metrics"]["loss"] == pytest.approx(final["loss"], rel=1e-5)
