"""`make reproduce-soft-tree`: the MNIST experiment of Frosst & Hinton (2017), "Distilling a Neural
Network Into a Soft Decision Tree": a soft decision tree of depth 8 trained on the labels, and the
same tree distilled from kdrun's MNIST teacher.

The teacher is the 1200-1200 net of `make reproduce-mnist`: the preset `experiment/soft_tree_mnist`
extends `experiment/hinton_mnist` and fixes the teacher's seed at 0, so the teacher's config digest is
the same and the teacher cache holds it once either reproduction has run. Each tree is an ordinary
kdrun run (any knob can be changed: `python -m kdrun.reproduce_soft_tree OUT -- student.kwargs.penalty=3`),
trained for each of `--seeds` (0 1 2); this module runs them into OUT/s<seed>/<job>, then writes
OUT/report.md with the test accuracies (mean and std over the seeds) next to the paper's,
OUT/tree.png (the first seed's distilled tree) and OUT/explain_test0.png (the path of the first
test image through it).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from kdrun import KdrunError
from kdrun.reproduce import parse_with_overrides, run_job

PAPER = {"labels": 0.9445, "distilled": 0.9676}  # the paper's MNIST test accuracies (a depth-8 tree)
JOBS = {"labels": ["kd=none"], "distilled": ["kd=hinton"]}


def mixture_accuracy(run_dir: Path) -> tuple[float, int]:
    """(test accuracy of the run's tree when it predicts with the mixture of all its leaves, its depth)."""
    from kdrun.engine import evaluate
    from kdrun.explain import load_tree, run_data

    cfg, tree, _ = load_tree(run_dir)
    tree.prediction = "mixture"
    return evaluate(tree, run_data(cfg).loader("test", 1024), torch.device("cpu"))["acc"], tree.depth


def _mean_std(values: list[float]) -> str:
    """In percent: the mean, and the sample standard deviation when there are two values or more."""
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def write_report(out: Path, runs: dict, depth: int) -> str:
    """runs: {seed: {job: {"summary": its summary.json, "mixture": its mixture test accuracy}}}."""
    seeds = sorted(runs)
    first = runs[seeds[0]]["distilled"]["summary"]
    teacher, params = first["teacher"], first["student"]["params"]
    acc = {(job, kind): [runs[s][job]["summary"]["student"]["test_acc"] if kind == "max" else runs[s][job]["mixture"]
                         for s in seeds] for job in JOBS for kind in ("max", "mixture")}
    gains = [d - l for d, l in zip(acc["distilled", "max"], acc["labels", "max"])]
    lines = ["# Frosst & Hinton (2017) on MNIST, reproduced by kdrun", "",
             f"Test accuracy (%), mean ± std over seeds {', '.join(map(str, seeds))} (the teacher's seed stays 0).", "",
             "| model | parameters | here (maximum-path leaf) | here (mixture of leaves) | in the paper |",
             "|---|---:|---:|---:|---:|",
             f"| teacher 1200-1200 (`make reproduce-mnist`'s) | {teacher['params']:,} | {100 * teacher['test_acc']:.2f} | | |"]
    for job, label in (("labels", "labels only"), ("distilled", f"distilled at T={first['T']:g}")):
        lines.append(f"| soft tree, depth {depth}, {label} | {params:,} | {_mean_std(acc[job, 'max'])} | "
                     f"{_mean_std(acc[job, 'mixture'])} | {100 * PAPER[job]:.2f} |")
    lines += ["", "| seed | labels | distilled | gain (points) | labels, mixture | distilled, mixture |",
              "|---:|---:|---:|---:|---:|---:|"]
    for i, seed in enumerate(seeds):
        lines.append(f"| {seed} | {100 * acc['labels', 'max'][i]:.2f} | {100 * acc['distilled', 'max'][i]:.2f} | "
                     f"{100 * gains[i]:+.2f} | {100 * acc['labels', 'mixture'][i]:.2f} | "
                     f"{100 * acc['distilled', 'mixture'][i]:.2f} |")
    minutes = sum(runs[s][job]["summary"]["wall_time_s"] for s in seeds for job in JOBS) / 60
    lines += ["", f"Distillation adds {_mean_std(gains)} points (paper: {100 * (PAPER['distilled'] - PAPER['labels']):+.2f}); "
                  "the target is at least +1.",
              f"Wall time of the runs: {minutes:.1f} min on {first['device']} (the teacher: {teacher['source']}); "
              f"runs in {out}/s<seed>/<job>/.",
              "", f"Figures: tree.png (seed {seeds[0]}'s distilled tree, top 4 levels) and explain_test0.png "
                  "(the path of the first test image through it)."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def figures(run_dir: Path, out: Path) -> None:
    from kdrun.explain import explain_test_image, load_tree, run_data, tree_figure

    cfg, tree, _ = load_tree(run_dir)
    tree_figure(tree, out / "tree.png")
    print(explain_test_image(cfg, run_data(cfg), tree, 0, out / "explain_test0.png"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kdrun.reproduce_soft_tree", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (e.g. outputs/reproduce-soft-tree)")
    parser.add_argument("--preset", default="soft_tree_mnist", help="configs/experiment/<preset>.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the trees' seeds (default 0 1 2)")
    parser.epilog = "kdrun overrides for every run follow a --: python -m kdrun.reproduce_soft_tree OUT -- epochs=10"
    args = parse_with_overrides(parser, argv)
    try:
        runs, depth = {}, None
        for seed in args.seeds:
            folder = args.out / f"s{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            runs[seed] = {}
            for job in JOBS:
                summary = run_job(job, folder, args.preset, [*args.overrides, f"seed={seed}"], JOBS)
                mixture, depth = mixture_accuracy(folder / job)
                runs[seed][job] = {"summary": summary, "mixture": mixture}
        figures(args.out / f"s{args.seeds[0]}" / "distilled", args.out)
        print(write_report(args.out, runs, depth))
    except KdrunError as e:
        sys.exit(f"kdrun.reproduce_soft_tree: error: {e}")


if __name__ == "__main__":
    main()
