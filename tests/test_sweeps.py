"""Sweeps: the summary and plots every multirun ends with, seed means, kdrun-report, failed jobs,
resuming a sweep, and Hydra's launcher and sweeper plugins. All on tiny fake data."""
from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from kdrun.report import main as report_main
from kdrun.report import write_report
from kdrun.sweep import aggregate_seeds, read_jobs, summarise
from tests.conftest import DATA_DIR, ROOT, TINY, kdrun_cli

FAKE = [*TINY, "teacher=mlp800", "dataset=fake"]


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


# --- a real 2x2 sweep with one infeasible combination --------------------------------------------

@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory):
    """dataset.num_train=300,600 x dataset.val_split=0.1,400: only (300, 400) cannot hold out 400 images."""
    tmp = tmp_path_factory.mktemp("failed_sweep")
    sweep = tmp / "sweep"
    proc = kdrun_cli("-m", *FAKE, "deploy_report=true", "dataset.num_train=300,600", "dataset.val_split=0.1,400",
                     f"hydra.sweep.dir={sweep}", f"teacher_cache={tmp / 'teachers'}", cwd=tmp)
    return sweep, proc


def test_a_failed_job_is_recorded_and_the_sweep_runs_on(failed_sweep):
    sweep, proc = failed_sweep
    rows = {r["job"]: r for r in _csv(sweep / "summary.csv")}
    assert {j: r["status"] for j, r in rows.items()} == {"0": "ok", "1": "failed", "2": "ok", "3": "ok"}
    failed = rows["1"]
    assert (failed["dataset.num_train"], failed["dataset.val_split"]) == ("300", "400")
    assert "holds out 400 of only 300 training images" in failed["error"]
    assert failed["student_test_acc"] == ""
    record = json.loads((sweep / "1" / "summary.json").read_text())
    assert record["status"] == "failed" and record["error"] == failed["error"]
    for job in ("0", "2", "3"):
        row, summary = rows[job], json.loads((sweep / job / "summary.json").read_text())
        assert row["error"] == "" and 0 < float(row["teacher_test_acc"]) <= 1
        assert float(row["student_test_acc"]) == summary["student"]["test_acc"]
        assert float(row["student_val_acc"]) == summary["student"]["best_val_acc"]
        assert _is_png(sweep / "curves" / f"{job}.png")
    assert not (sweep / "curves" / "1.png").exists()  # it never trained
    assert _is_png(sweep / "heatmap.png")  # two keys swept: num_train x val_split
    assert _is_png(sweep / "tradeoff.png") and rows["0"]["student_macs"] == rows["2"]["student_macs"] != ""
    # summary.md: best (validation accuracy) first, the failed job last
    md_jobs = [line.split("|")[1].strip() for line in (sweep / "summary.md").read_text().splitlines()
               if line.startswith("| ") and not line.startswith("| job")]
    best = max(("0", "2", "3"), key=lambda j: float(rows[j]["student_val_acc"]))
    assert md_jobs[0] == best and md_jobs[-1] == "1" and len(md_jobs) == 4
    # the sweep's table and closing line
    assert "kdrun sweep: 4 jobs" in proc.stdout and "3 ok, 1 failed, 0 missing" in proc.stdout.replace("\n", " ")


def test_kdrun_report_on_a_copied_sweep_reproduces_its_summary(failed_sweep, tmp_path):
    sweep, _ = failed_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    for name in ("summary.csv", "summary.md", "heatmap.png"):
        (copy / name).unlink()
    shutil.rmtree(copy / "curves")
    proc = subprocess.run([sys.executable, "-m", "kdrun.report", str(copy)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "summary.csv").read_bytes() == (sweep / "summary.csv").read_bytes()
    assert (copy / "summary.md").read_text() == (sweep / "summary.md").read_text()
    assert _is_png(copy / "heatmap.png") and len(list((copy / "curves").glob("*.png"))) == 3


def test_a_sweep_resumed_with_another_grid_keeps_every_complete_job(failed_sweep, tmp_path):
    """The jobs are found by number: with val_split=0.2 instead of 0.1, jobs 0 and 2 are another config.
    They are refused, and left exactly as they were: results, metrics and Hydra's record."""
    sweep, _ = failed_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    kept = {job: {name: (copy / job / name).read_bytes() for name in
                  ("summary.json", "metrics.jsonl", ".hydra/overrides.yaml", ".hydra/config.yaml")} for job in "023"}
    proc = kdrun_cli("-m", *FAKE, "dataset.num_train=300,600", "dataset.val_split=0.2,400", "resume=true",
                     f"hydra.sweep.dir={copy}", f"teacher_cache={sweep.parent / 'teachers'}", cwd=tmp_path)
    for job, files in kept.items():
        assert {name: (copy / job / name).read_bytes() for name in files} == files, f"job {job} was changed"
    assert (proc.stdout + proc.stderr).count("holds a complete run of another config") == 2
    rows = {r["job"]: r for r in _csv(copy / "summary.csv")}
    assert [(rows[j]["status"], rows[j]["dataset.val_split"]) for j in "0123"] == [
        ("ok", "0.1"), ("failed", "400"), ("ok", "0.1"), ("ok", "400")]


def test_kdrun_report_trusts_summary_json_over_hydra(tmp_path):
    """.hydra/ is rewritten at every start of a run; summary.json is written once, by the run itself."""
    _fake_job(tmp_path / "sweep" / "0", ["T=2"], 0.9)
    summary_path = tmp_path / "sweep" / "0" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "overrides": ["T=1"]}))
    assert [r["T"] for r in summarise(read_jobs([tmp_path / "sweep"])).rows] == ["1"]


def test_kdrun_report_over_a_folder_of_runs(tmp_path):
    """Failed runs are failed, dry runs are not runs, and the report goes beside the folder, not into it."""
    runs = tmp_path / "runs"
    _fake_job(runs / "a", ["T=1"], 0.9)
    _fake_job(runs / "b", ["T=2"], error="T=0.0: the temperature must be > 0 (e.g. T=4)")
    _fake_job(runs / "c", ["T=3", "dry_run=true"])  # a dry run: Hydra's files, no summary
    (runs / "c" / ".hydra" / "config.yaml").write_text("T: 3\ndry_run: true\n")
    _fake_job(runs / "d", ["T=4"])  # still running, or killed
    report_main([str(runs)])
    rows = _csv(tmp_path / "runs-report" / "summary.csv")
    assert [(r["job"], r["status"]) for r in rows] == [("a", "ok"), ("b", "failed"), ("d", "missing")]
    assert sorted(p.name for p in runs.iterdir()) == ["a", "b", "c", "d"]


def test_kdrun_report_is_a_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kdrun-report"] == "kdrun.report:main"


def test_kdrun_report_mistakes_end_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "empty")])
    assert str(e.value.code).startswith("kdrun-report: error: no run directories under")
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "nowhere")])
    assert "no such directory" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert "--out" in str(e.value.code)


# --- seed means and the scratch baseline, on made-up summaries -----------------------------------

def _fake_job(folder: Path, overrides: list[str], student_acc=None, kd=("hinton",), error=None):
    """A run directory as a job leaves it: Hydra's overrides.yaml, and summary.json once it ended."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if error is not None:
        summary = {"status": "failed", "error": error}
    elif student_acc is not None:
        summary = {"status": "ok", "kd": list(kd), "wall_time_s": 1.0,
                   "student": {"test_acc": student_acc, "best_val_acc": student_acc - 0.01},
                   "teacher": {"test_acc": 0.99} if kd else None}
    else:
        return  # still running, or killed: missing
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def made_up_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [
        (["T=1", "seed=0"], 0.90), (["T=1", "seed=1"], 0.92), (["T=1", "seed=2"], 0.97),
        (["T=2", "seed=0"], 0.80), (["T=2", "seed=1"], 0.85), (["T=2", "seed=2"], "failed"),
        (["kd=none", "seed=0"], 0.70), (["kd=none", "seed=1"], 0.74),
        (["kd=none", "seed=0", "epochs=5"], 0.60), (["T=1", "seed=0", "epochs=5"], 0.66),
        (["T=3", "seed=0", "resume=true", "progress=false"], None),
    ]
    for i, (overrides, result) in enumerate(jobs):
        kd = () if "kd=none" in overrides else ("hinton",)
        if kd:  # a teacher setting cannot matter to the scratch baseline, which has none
            overrides = [*overrides[:2], "teacher.epochs=3", *overrides[2:]]
        if result == "failed":
            _fake_job(sweep / str(i), overrides, error="the training loss became nan; lower the learning rate (lr)")
        else:
            _fake_job(sweep / str(i), overrides, result, kd=kd)
    return sweep


def test_seed_means_and_sample_stds_by_hand(made_up_sweep):
    jobs = read_jobs([made_up_sweep])
    assert [j.name for j in jobs] == [str(i) for i in range(11)]  # job 10 after job 9
    summary = summarise(jobs)
    # resume and progress are bookkeeping, not keys
    assert summary.keys == ["T", "seed", "teacher.epochs", "kd", "epochs"]
    assert [r["status"] for r in summary.rows] == ["ok"] * 5 + ["failed"] + ["ok"] * 4 + ["missing"]
    columns, groups = aggregate_seeds(summary)
    assert "seed" not in columns
    by_key = {(g["T"], g["kd"], g["epochs"]): g for g in groups}
    approx = lambda x: pytest.approx(x, abs=1e-6)  # noqa: E731

    t1 = by_key[("1", "", "")]  # 0.90, 0.92, 0.97: mean 0.93, deviations -.03 -.01 .04
    assert (t1["n"], t1["jobs"]) == (3, "0 1 2")
    assert t1["student_test_acc_mean"] == approx(0.93)
    assert t1["student_test_acc_std"] == approx((0.0026 / 2) ** 0.5)  # sample std: n - 1 = 2, not pstdev's 3
    assert t1["student_val_acc_mean"] == approx(0.92) and t1["teacher_test_acc_mean"] == approx(0.99)
    # the scratch baseline: the kd=none jobs with the same other keys, any seed: (0.70 + 0.74) / 2
    assert t1["scratch_test_acc"] == approx(0.72) and t1["gain_mean"] == approx(0.21)

    t2 = by_key[("2", "", "")]  # 0.80, 0.85 and a failed seed: the failure is counted, not averaged
    assert (t2["n"], t2["n_failed"], t2["n_missing"]) == (2, 1, 0)
    assert t2["student_test_acc_mean"] == approx(0.825) and t2["student_test_acc_std"] == approx(0.025 * 2 ** 0.5)
    assert t2["gain_mean"] == approx(0.105) and "loss became nan" in t2["error"]

    scratch = by_key[("", "none", "")]
    assert scratch["student_test_acc_mean"] == approx(0.72)
    assert scratch["student_test_acc_std"] == approx(0.02 * 2 ** 0.5)
    assert scratch["gain_mean"] == approx(0.0)
    # epochs=5 jobs are matched to the epochs=5 baseline only (0.60), and one value has no std
    five = by_key[("1", "", "5")]
    assert (five["n"], five["student_test_acc_std"]) == (1, None)
    assert five["scratch_test_acc"] == approx(0.60) and five["gain_mean"] == approx(0.06)
    assert by_key[("", "none", "5")]["scratch_test_acc"] == approx(0.60)
    missing = by_key[("3", "", "")]
    assert (missing["n"], missing["n_missing"], missing["student_test_acc_mean"]) == (0, 1, None)


def test_report_files_on_made_up_summaries(made_up_sweep, tmp_path):
    out = tmp_path / "report"
    result = write_report([made_up_sweep], out)
    assert (result["ok"], result["failed"], result["missing"]) == (9, 1, 1)
    rows = _csv(out / "summary.csv")
    assert len(rows) == 11 and rows[0]["gain"] == "0.18"  # 0.90 - 0.72
    seeds = {(r["T"], r["kd"], r["epochs"]): r for r in _csv(out / "summary_seeds.csv")}
    assert float(seeds[("1", "", "")]["student_test_acc_std"]) == pytest.approx(0.036056, abs=1e-6)
    assert seeds[("2", "", "")]["n_failed"] == "1"
    # T and epochs vary among the KD jobs (kd=none is the baseline, no axis): 4 of the 6 cells have a job
    assert "heatmap.png" in result["written"] and not (out / "lineplot.png").exists()

    # One key swept (T, over seeds): a line plot with error bars.
    for job in ("6", "7", "8", "9"):
        shutil.rmtree(made_up_sweep / job)
    result = write_report([made_up_sweep], out)
    assert "lineplot.png" in result["written"] and _is_png(out / "lineplot.png")
    assert not (out / "heatmap.png").exists()


def test_a_shared_baseline_shows_once_per_group(tmp_path):
    """kdrun -m kd=hinton,none T=2,4: the kd=none jobs differ only in T, which they ignore; the second
    shared the first's result (kdrun.baseline). One baseline row, counted once, and T the one axis."""
    sweep = tmp_path / "sweep"
    for job, (overrides, acc) in enumerate([(["kd=hinton", "T=2"], 0.90), (["kd=hinton", "T=4"], 0.93),
                                            (["kd=none", "T=2"], 0.80), (["kd=none", "T=4"], 0.80)]):
        _fake_job(sweep / str(job), overrides, acc, kd=() if "kd=none" in overrides else ("hinton",))
    summary_path = sweep / "3" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "shared_from": "2"}))
    summary = summarise(read_jobs([sweep]))
    assert [r["status"] for r in summary.rows] == ["ok", "ok", "ok", "shared"]
    _, groups = aggregate_seeds(summary)
    assert [(g["kd"], g["T"], g["jobs"], g["n"]) for g in groups] == [
        ("hinton", "2", "0", 1), ("hinton", "4", "1", 1), ("none", "", "2 3", 1)]
    assert [g["gain_mean"] for g in groups[:2]] == [pytest.approx(0.10), pytest.approx(0.13)]
    result = write_report([sweep], tmp_path / "out")
    assert "lineplot.png" in result["written"] and "heatmap.png" not in result["written"]


def test_a_baseline_shared_across_a_key_it_ignores_is_every_kd_jobs_baseline(tmp_path):
    """kdrun -m kd=none,hinton cache_teacher_logits=true,false (and a second seed of one baseline): job 1
    shared job 0's result, since a student without a teacher ignores cache_teacher_logits (kdrun.baseline).
    The report ignores it too: the kd=none jobs are one group, and both KD jobs are matched to the
    mean of the two trained baselines (0.80, 0.70), job 1's copy of job 0 not counted again."""
    from kdrun.report import _status

    sweep = tmp_path / "sweep"
    for job, (overrides, acc) in enumerate([
            (["kd=none", "cache_teacher_logits=true", "seed=0"], 0.80),
            (["kd=none", "cache_teacher_logits=false", "seed=0"], 0.80),
            (["kd=none", "cache_teacher_logits=true", "seed=1"], 0.70),
            (["kd=hinton", "cache_teacher_logits=true", "seed=0"], 0.90),
            (["kd=hinton", "cache_teacher_logits=false", "seed=0"], 0.92)]):
        _fake_job(sweep / str(job), overrides, acc, kd=() if "kd=none" in overrides else ("hinton",))
    summary_path = sweep / "1" / "summary.json"
    summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "shared_from": "0"}))

    summary = summarise(read_jobs([sweep]))
    assert [r["status"] for r in summary.rows] == ["ok", "shared", "ok", "ok", "ok"]
    assert [r["scratch_test_acc"] for r in summary.rows[3:]] == [pytest.approx(0.75)] * 2
    assert [r["gain"] for r in summary.rows[3:]] == [pytest.approx(0.15), pytest.approx(0.17)]
    _, groups = aggregate_seeds(summary)
    assert [(g["kd"], g["cache_teacher_logits"], g["jobs"], g["n"], _status(g)) for g in groups] == [
        ("none", "", "0 1 2", 2, "ok"), ("hinton", "true", "3", 1, "ok"), ("hinton", "false", "4", 1, "ok")]
    assert groups[0]["student_test_acc_mean"] == pytest.approx(0.75)

    # Without the job it shared from (another folder of runs), a shared job is still a baseline: its
    # copy of the result counts, and its group says where the result came from.
    summary = summarise(read_jobs([sweep / "1", sweep / "4"]))
    assert summary.rows[1]["scratch_test_acc"] == pytest.approx(0.80)
    _, groups = aggregate_seeds(summary)
    assert [(g["jobs"], g["n"], _status(g), g["student_test_acc_mean"]) for g in groups][0] == \
        ("1", 1, "shared", pytest.approx(0.80))


# --- resume a sweep killed midway ----------------------------------------------------------------

def _snapshot(run_dir: Path) -> dict:
    files = [run_dir / "summary.json", run_dir / "metrics.jsonl", *sorted((run_dir / "checkpoints").iterdir())]
    return {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in files}


def test_resume_a_sweep_interrupted_midway(tmp_path):
    """Jobs 0 and 1 are short, job 2 long: Ctrl-C in job 2 stops the whole sweep (job 3 never starts);
    the same command plus resume=true skips 0 and 1 untouched, resumes 2 from its checkpoint, runs 3."""
    sweep = tmp_path / "sweep"
    args = ["-m", *FAKE, "dataset.num_train=300", "epochs=1,5", "seed=0,1", f"hydra.sweep.dir={sweep}",
            f"teacher_cache={tmp_path / 'teachers'}"]
    env = {**os.environ, "KDRUN_DATA_DIR": str(DATA_DIR)}
    proc = subprocess.Popen([sys.executable, "-m", "kdrun", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = sweep / "2" / "checkpoints" / "student_last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted" in err
    assert not (sweep / "2" / "summary.json").exists() and not (sweep / "3").exists()
    assert not (sweep / "summary.csv").exists()  # an interrupted sweep ends without its summary
    finished = {job: _snapshot(sweep / job) for job in ("0", "1")}
    cut_lines = (sweep / "2" / "metrics.jsonl").read_text().splitlines()
    cut_epochs = [json.loads(x)["epoch"] for x in cut_lines if json.loads(x)["model"] == "student"]
    assert 1 <= len(cut_epochs) < 5

    # The message gives the command that continues the sweep, with its real directory: run it.
    command = re.search(r"Continue with:\n  (.+)", err)[1]
    assert command == " ".join(["python -m kdrun", *(a for a in args if "sweep.dir" not in a), "resume=true",
                                f"hydra.sweep.dir={sweep}"])
    kdrun_cli(*shlex.split(command)[3:], cwd=tmp_path)
    for job in ("0", "1"):
        assert _snapshot(sweep / job) == finished[job], f"job {job} was run again"
    lines = (sweep / "2" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines if json.loads(x)["model"] == "student"] == list(range(1, 6))
    assert lines[:len(cut_lines)] == cut_lines  # the epochs before the interruption were not trained again
    rows = _csv(sweep / "summary.csv")
    assert [(r["job"], r["status"], r["epochs"], r["seed"]) for r in rows] == [
        ("0", "ok", "1", "0"), ("1", "ok", "1", "1"), ("2", "ok", "5", "0"), ("3", "ok", "5", "1")]
    assert "resume" not in rows[0]


# --- Hydra's launcher and sweeper plugins --------------------------------------------------------

def _teacher_sources(sweep: Path, jobs: int) -> list[str]:
    return sorted(json.loads((sweep / str(i) / "summary.json").read_text())["teacher"]["source"] for i in range(jobs))


def test_joblib_launcher_with_two_workers_trains_one_teacher(tmp_path):
    sweep = tmp_path / "sweep"
    proc = kdrun_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAKE, "T=1,4",
                     f"hydra.sweep.dir={sweep}", f"teacher_cache={tmp_path / 'teachers'}", cwd=tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    assert _teacher_sources(sweep, 2) == ["cache", "trained"]  # the cache's lock: one teacher per sweep
    assert [r["status"] for r in _csv(sweep / "summary.csv")] == ["ok", "ok"]


@pytest.mark.slow  # `make test-slow` runs it; the joblib launcher's test keeps a launcher in `make test`
def test_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "sweep"
    kdrun_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *FAKE, "kd=none", "seed=0,1",
              f"hydra.sweep.dir={sweep}", f"teacher_cache={tmp_path / 'teachers'}", cwd=tmp_path)
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # each job ran as a submitit job
    assert [(r["seed"], r["status"]) for r in _csv(sweep / "summary.csv")] == [("0", "ok"), ("1", "ok")]


@pytest.mark.slow  # a whole Optuna search: `make test-slow` runs it, to keep `make test` within 5 minutes
def test_optuna_search_maximises_the_validation_accuracy(tmp_path):
    sweep = tmp_path / "sweep"
    kdrun_cli("-m", "hydra/sweeper=kd_optuna", "hydra.sweeper.n_trials=3", *FAKE, f"hydra.sweep.dir={sweep}",
              f"teacher_cache={tmp_path / 'teachers'}", cwd=tmp_path)
    rows = _csv(sweep / "summary.csv")
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert all(1 <= float(r["T"]) <= 20 and 0 <= float(r["alpha"]) <= 1 for r in rows)
    assert len({r["T"] for r in rows}) == 3  # three different trials
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(float(r["student_val_acc"]) for r in rows)  # maximised, not minimised
    best = [float(r["T"]) for r in rows if float(r["student_val_acc"]) == result["best_value"]]
    assert result["best_params"]["T"] == pytest.approx(best[0]) or result["best_params"]["T"] in best


def test_plots_are_coloured_by_validation_accuracy_and_titled_with_the_setting(tmp_path):
    from kdrun import plots

    groups = [{"T": t, "alpha": a, "student_test_acc_mean": test, "student_val_acc_mean": val,
               "student_test_acc_std": None, "n_failed": 0}
              for t, a, test, val in [("1", "0.1", 0.90, 0.50), ("1", "0.5", 0.80, 0.60),
                                      ("2", "0.1", 0.70, 0.70), ("2", "0.5", 0.60, 0.80)]]
    fig = plots.heatmap(tmp_path / "h.png", "T", "alpha", groups, "title")
    ax = fig.axes[0]
    assert ax.images[0].get_array().tolist() == [[50.0, 60.0], [70.0, 80.0]]  # colour: validation
    assert [t.get_text() for t in ax.texts] == ["90.00", "80.00", "70.00", "60.00"]  # written: test
    assert "validation" in fig.axes[1].get_ylabel()
    fig = plots.scatter(tmp_path / "s.png", "T", "alpha", groups, "title")
    assert fig.axes[0].collections[0].get_array().tolist() == [50.0, 60.0, 70.0, 80.0]

    from kdrun.report import setting_title
    from kdrun.sweep import Job

    summary = {"dataset": "mnist", "teacher": {"arch": "mlp1200"}, "student": {"arch": "mlp800"}}
    jobs = [Job("0", tmp_path, {}, summary), Job("1", tmp_path, {}, {**summary, "teacher": None}),
            Job("2", tmp_path, {}, {})]
    assert setting_title(jobs) == "mnist: mlp1200 -> mlp800"
