"""Speed options and the reproduction/benchmark entry points, on tiny data (no timing here: speed is
measured by `make bench`, which prints numbers)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from kdrun import KdrunError
from kdrun.data import build_data
from kdrun.run import run
from kdrun.speed import amp_dtype, use_channels_last
from tests.conftest import DATA_DIR, make_cfg, needs_mnist

CPU = torch.device("cpu")


def test_auto_speed_options_stay_off_on_the_cpu():
    from torch import nn

    assert amp_dtype("auto", CPU) is None and amp_dtype("bf16", CPU) is torch.bfloat16
    assert not use_channels_last("auto", CPU, nn.Conv2d(1, 1, 3)) and use_channels_last("on", CPU, nn.Conv2d(1, 1, 3))
    assert not use_channels_last("on", CPU, nn.Linear(2, 2))  # no convolution: nothing to gain
    with pytest.raises(KdrunError, match="amp=fp16 needs a CUDA device"):
        amp_dtype("fp16", CPU)


def test_bf16_and_channels_last_train_a_cnn(tmp_path):
    summary = run(make_cfg("dataset=fake", "teacher=lenet5", "student=lenet5", "amp=bf16", "channels_last=on",
                           tmp=tmp_path), tmp_path / "run")
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["status"] == "ok" and torch.isfinite(torch.tensor(line["train/loss"]))


def test_bad_speed_values(tmp_path):
    with pytest.raises(KdrunError, match=r"^amp=fp8: choose auto, off, bf16 or fp16"):
        run(make_cfg("dataset=fake", "amp=fp8", tmp=tmp_path), tmp_path / "run")


def test_exclude_classes_leaves_them_out_of_training():
    cfg = make_cfg("dataset=fake")
    data = build_data(cfg.dataset, "/unused", CPU)
    labels = torch.cat([y for _, y in data.loader("train", 64, exclude=[3])])
    assert 3 not in labels.tolist() and len(labels) < data.sizes["train"]


@needs_mnist
def test_tiny_reproduction_writes_the_report_with_every_row(tmp_path):
    from kdrun.reproduce import main

    main([str(tmp_path / "out"), "--omit3", "--", "dataset.train_subset=400", "dataset.test_subset=1000",
          "teacher.epochs=1", "epochs=1",
          "progress=false", f"teacher_cache={tmp_path / 'teachers'}", f"data_dir={DATA_DIR}"])
    report = (tmp_path / "out" / "report.md").read_text()
    for row in ("| teacher 1200-1200", "| student 800-800, labels only", "| student 800-800, distilled at T=20",
                "| distilled without 3s", "| + bias of class 3 raised by"):
        assert row in report, row
    assert "| 67 |" in report and "| 146 |" in report and "| 74 |" in report
    # the deployment table: the 1200-1200 teacher's 2.4 M multiply-adds per image against the student's 1.28 M
    assert "## What the compression bought" in report and "| teacher 1200-1200 | 2,395,210 | 9.58 MB | 2.39 M |" in report
    assert "| student 800-800, distilled | 1,276,810 | 5.11 MB | 1.28 M |" in report
    assert "student vs teacher: 1.88x fewer parameters, 1.88x fewer mult-adds" in report
    assert (tmp_path / "out" / "errors.png").stat().st_size > 1000
    distilled = json.loads((tmp_path / "out" / "distilled" / "summary.json").read_text())
    assert distilled["T"] == 20 and distilled["teacher_logits"] == "cached"


@needs_mnist
def test_bench_prints_every_case(capsys):
    from kdrun.bench import main

    # Case (e) launches torchrun once per world size: one process here (the 2-process runs are tested in
    # test_distributed.py).
    result = main(["--steps", "3", "--rounds", "2", "--workers", "0", "--world-sizes", "1", "--cnn-steps", "1", "dataset.train_subset=1000",
                   "student.batch_size=8", f"data_dir={DATA_DIR}"])
    out = capsys.readouterr().out
    for case in ("(a) student alone", "(b) KD, live teacher", "(c) KD, cached teacher logits", "(d) KD, live teacher, "
                 "DataLoader", "(c)/(a) =", "(c)/(d) =", "(bare) bare eager PyTorch KD step", "CNN case: resnet50 -> "
                 "mobilenet_v2", "kdrun KD step, first pass", "kdrun first pass / bare =", "peak memory",
                 "(e) torchrun --nproc_per_node=1", "median of 2 round(s)", "(c)/(a) = ", "(b)/bare = "):
        assert case in out, case
    # Each ratio is the median of the rounds' own ratios, and its spread over the rounds is printed.
    assert re.search(r"\(c\)/\(a\) = [0-9.]+ \(rounds [0-9.]+-[0-9.]+\)", out), out
    assert all(result[k] > 0 for k in ["a", "b", "c", "d", "bare", "cnn_first", "cnn_bare"]) and result["ddp"][1] > 0
