"""`make reproduce-mnist`: the MNIST experiment of Hinton, Vinyals & Dean (2015), section 3.

Each model is an ordinary kdrun run of the `experiment/hinton_mnist*` presets (so any knob can be
changed: `python -m kdrun.reproduce OUT -- teacher.epochs=100`); this module runs them, then writes
OUT/report.md and OUT/errors.png with the errors measured here next to the paper's.

The omitted-3 experiment (`--omit3`) distils into a student whose transfer set has no 3, then
raises the bias of class 3 by the amount that minimises the errors on the training set (whose
threes the student never saw). The paper picked its 3.5 on the test set; we do not select on it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from kdrun import KdrunError

PAPER = {"teacher": 67, "scratch": 146, "distilled": 74, "omit3": 206, "omit3_threes": 133, "omit3_bias": 109,
         "omit3_bias_threes": 14, "bias": 3.5}
# The report's deployment table is the distilled run's (its teacher and student): the others skip measuring.
JOBS = {"scratch": ["kd=none", "deploy_report=false"], "distilled": ["kd=hinton"],
        "omit3": ["kd=hinton", "student.exclude_classes=[3]", "deploy_report=false"]}


def run_job(name: str, out: Path, preset: str, overrides: list[str], jobs: dict = JOBS) -> dict:
    """One kdrun run (of `jobs[name]`) into OUT/<name>; a complete one is reused (resume=true)."""
    run_dir = out / name
    cmd = [sys.executable, "-m", "kdrun", f"+experiment={preset}", *jobs[name], *overrides, "resume=true",
           f"hydra.run.dir={run_dir}"]
    print(f"== {name}: kdrun {' '.join(cmd[3:])}", flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise KdrunError(f"the {name} run failed; see {run_dir}/kdrun.log")
    return json.loads((run_dir / "summary.json").read_text())


def omit3_analysis(run_dir: Path, preset: str, overrides: list[str]) -> dict:
    """Errors of the no-3 student overall and on the 3s, before and after raising the bias of class 3."""
    from hydra import compose, initialize_config_dir

    from kdrun.checkpoint import load_weights
    from kdrun.config import config_dir, register_configs
    from kdrun.data import build_data
    from kdrun.models import build_from_config, model_meta

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[f"+experiment={preset}", *JOBS["omit3"], *overrides])
    data = build_data(cfg.dataset, cfg.data_dir, torch.device("cpu"))
    model = build_from_config(cfg.student, data)
    load_weights(model, run_dir / "checkpoints" / "student_best.pt", "omit3 student", **model_meta(cfg.student, data))
    model.eval()

    def logits_and_labels(split):
        with torch.no_grad():
            pairs = [(model(x), y) for x, y in data.loader(split, 2048)]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def errors(logits, labels, bias):
        shifted = logits.clone()
        shifted[:, 3] += bias
        wrong = shifted.argmax(1) != labels
        return int(wrong.sum()), int(wrong[labels == 3].sum())

    train_logits, train_labels = logits_and_labels("train")
    grid = [b / 2 for b in range(0, 21)]  # 0 to 10 in steps of 0.5
    bias = min(grid, key=lambda b: (errors(train_logits, train_labels, b)[0], b))
    test_logits, test_labels = logits_and_labels("test")
    before, after = errors(test_logits, test_labels, 0.0), errors(test_logits, test_labels, bias)
    return {"bias": bias, "errors": before[0], "threes": before[1], "bias_errors": after[0], "bias_threes": after[1],
            "test_threes": int((test_labels == 3).sum())}


def write_report(out: Path, summaries: dict, omit3: dict | None) -> str:
    teacher = summaries["distilled"]["teacher"]
    rows = [("teacher 1200-1200 (dropout, jitter)", teacher["params"], teacher["test_errors"], PAPER["teacher"]),
            ("student 800-800, labels only", summaries["scratch"]["student"]["params"],
             summaries["scratch"]["student"]["test_errors"], PAPER["scratch"]),
            (f"student 800-800, distilled at T={summaries['distilled']['T']:g}",
             summaries["distilled"]["student"]["params"], summaries["distilled"]["student"]["test_errors"],
             PAPER["distilled"])]
    lines = ["# Hinton et al. (2015) on MNIST, reproduced by kdrun", "",
             "| model | parameters | test errors here | test errors in the paper |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {params:,} | {mine} | {paper} |" for name, params, mine, paper in rows]
    scratch, distilled = rows[1][2], rows[2][2]
    lines += ["", f"Distillation removes {100 * (scratch - distilled) / scratch:.0f}% of the scratch student's errors "
                  f"(paper: {100 * (PAPER['scratch'] - PAPER['distilled']) / PAPER['scratch']:.0f}%).",
              f"Wall time: teacher and students {sum(s['wall_time_s'] for s in summaries.values() if s) / 60:.1f} min "
              f"on {summaries['distilled']['device']}; runs in {out}/<job>/."]
    student = summaries["distilled"]["student"]
    if "deploy" in teacher and "deploy" in student:
        from kdrun.report import compression_line, deploy_markdown

        cpu = f"{teacher['deploy']['cpu_threads']} CPU thread(s)"
        lines += ["", "## What the compression bought", "",
                  deploy_markdown({"teacher 1200-1200": teacher, "student 800-800, distilled": student}).rstrip(), "",
                  f"{compression_line(summaries['distilled']['compression'])}. Multiply-adds per image; latency: "
                  f"median of repeated single images after warm-up on {cpu}; throughput: batch 64."]
    if omit3:
        lines += ["", "## The transfer set without any 3", "",
                  "| student | test errors here | on the 3s | in the paper | on the 3s in the paper |",
                  "|---|---:|---:|---:|---:|",
                  f"| distilled without 3s | {omit3['errors']} | {omit3['threes']} / {omit3['test_threes']} | "
                  f"{PAPER['omit3']} | {PAPER['omit3_threes']} / 1010 |",
                  f"| + bias of class 3 raised by {omit3['bias']:g} (paper: {PAPER['bias']:g}) | {omit3['bias_errors']} | "
                  f"{omit3['bias_threes']} / {omit3['test_threes']} | {PAPER['omit3_bias']} | {PAPER['omit3_bias_threes']} / 1010 |",
                  "", "The bias is the one that minimises the errors on the training set, whose threes the student "
                      "never saw; the paper chose its value on the test set."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    _plot(out / "errors.png", rows)
    return text


def _plot(path: Path, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r[2] for r in rows], width=0.4, label="kdrun")
    ax.bar([x + 0.2 for x in xs], [r[3] for r in rows], width=0.4, label="paper")
    ax.set_xticks(list(xs), ["teacher", "scratch student", "distilled student"])
    ax.set_ylabel("MNIST test errors (of 10,000)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments before a `--`; those after it (kdrun overrides for every run) are `args.overrides`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kdrun.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (e.g. outputs/reproduce-mnist)")
    parser.add_argument("--preset", default="hinton_mnist", help="configs/experiment/<preset>.yaml")
    parser.add_argument("--omit3", action="store_true", help="also the transfer set without any 3")
    parser.epilog = "kdrun overrides for every run follow a --: python -m kdrun.reproduce OUT -- teacher.epochs=100"
    args = parse_with_overrides(parser, argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        names = ["scratch", "distilled"] + (["omit3"] if args.omit3 else [])
        summaries = {name: run_job(name, args.out, args.preset, args.overrides) for name in names}
        omit3 = omit3_analysis(args.out / "omit3", args.preset, args.overrides) if args.omit3 else None
        print(write_report(args.out, summaries, omit3))
    except KdrunError as e:
        sys.exit(f"kdrun.reproduce: error: {e}")


if __name__ == "__main__":
    main()
