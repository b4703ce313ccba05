"""make reproduce-cifar100: the multirun it launches, and its report on a fabricated sweep directory."""
from __future__ import annotations

import json

from omegaconf import OmegaConf

from kdrun.cifar100_published import MDISTILLER, PAIRS, REPDISTILLER
from kdrun.reproduce_cifar100 import sweep_overrides, write_report
from tests.conftest import CONFIGS


def job(sweep, n, overrides, summary):
    folder = sweep / str(n)
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), folder / ".hydra" / "overrides.yaml")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def ok(student, teacher=None):
    return {"status": "ok", "student": {"test_acc": student},
            "teacher": {"test_acc": teacher, "source": "checkpoint"} if teacher else None}


def test_the_sweep_covers_every_pair_and_method_and_each_has_a_preset(tmp_path):
    overrides = sweep_overrides(["none", "hinton", "dkd"], [0, 1], tmp_path, "best_test_epoch", ["device=cuda"],
                                tmp_path / "sweep")
    assert overrides[:3] == ["+experiment=cifar100_none,cifar100_hinton,cifar100_dkd", f"pair={','.join(PAIRS)}",
                             "seed=0,1"]
    assert f"teacher.checkpoint={tmp_path.resolve()}" in overrides and "dataset.protocol=best_test_epoch" in overrides
    assert overrides[-1] == "device=cuda"
    assert {p.stem for p in (CONFIGS / "pair").glob("*.yaml")} == {*PAIRS, "none"}
    methods = {*REPDISTILLER, *MDISTILLER} - {"teacher"}
    assert {p.stem for p in (CONFIGS / "experiment").glob("cifar100_*.yaml")} == {f"cifar100_{m}" for m in methods}


def test_the_report_puts_means_and_gaps_next_to_the_published_numbers(tmp_path):
    sweep = tmp_path / "sweep"
    base = ["pair=resnet32x4-resnet8x4", "resume=true"]
    job(sweep, 0, ["+experiment=cifar100_hinton", *base, "seed=0"], ok(0.7300, teacher=0.7950))
    job(sweep, 1, ["+experiment=cifar100_hinton", *base, "seed=1"], ok(0.7400, teacher=0.7950))
    job(sweep, 2, ["+experiment=cifar100_none", *base, "seed=0"], ok(0.7200))
    job(sweep, 3, ["+experiment=cifar100_dkd", *base, "seed=0"], {"status": "failed", "error": "KdrunError: boom"})
    job(sweep, 4, ["+experiment=cifar100_dkd", *base, "seed=1"], None)  # still running
    job(sweep, 5, ["+experiment=cifar100_dkd", "pair=vgg13-vgg8", "seed=0"], ok(0.7500, teacher=0.7464))
    text = write_report(tmp_path, sweep)
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| pair")}
    # KD: mean 73.50 of two seeds, sample std 0.71; RepDistiller's 73.33; gap +0.17
    assert rows[("resnet32x4-resnet8x4", "KD")][:4] == ["73.50 ± 0.71 (2)", "73.33", "RepDistiller", "+0.17"]
    assert rows[("resnet32x4-resnet8x4", "teacher (checkpoint)")][:4] == ["79.50", "79.42", "RepDistiller", "+0.08"]
    assert rows[("resnet32x4-resnet8x4", "student (labels only)")][:4] == ["72.00 (1)", "72.50", "RepDistiller", "-0.50"]
    dkd = rows[("resnet32x4-resnet8x4", "DKD")]
    assert dkd[0] == "-" and "1 failed: KdrunError: boom" in dkd[4] and "1 missing" in dkd[4]
    assert rows[("vgg13-vgg8", "DKD")][:4] == ["75.00 (1)", "74.68", "mdistiller", "+0.32"]
    assert "held out" in text and "PROTOCOL=best_test_epoch" in text  # the protocol note
    assert (tmp_path / "report.png").stat().st_size > 1000
