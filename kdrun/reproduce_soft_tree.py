"""`make reproduce-soft-tree`: the MNIST experiment of Frosst & Hinton (2017), "Distilling a Neural
Network Into a Soft Decision Tree": a soft decision tree of depth 8 trained on the labels, and the
same tree distilled from kdrun's MNIST teacher.

The teacher is the 1200-1200 net of `make reproduce-mnist`: the preset `experiment/soft_tree_mnist`
extends `experiment/hinton_mnist`, so the teacher's config digest is the same and the teacher cache
holds it once either reproduction has run. Each tree is an ordinary kdrun run (any knob can be
changed: `python -m kdrun.reproduce_soft_tree OUT -- student.kwargs.penalty=1`); this module runs
them, then writes OUT/report.md with the test accuracies next to the paper's, OUT/tree.png (the
distilled tree's top levels) and OUT/explain_test0.png (the path of the first test image).
"""
from __future__ import annotations

import argparse
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
    from kdrun.explain import load_tree

    _, data, tree = load_tree(run_dir)
    tree.prediction = "mixture"
    return evaluate(tree, data.loader("test", 1024), torch.device("cpu"))["acc"], tree.depth


def write_report(out: Path, summaries: dict, mixtures: dict, depth: int) -> str:
    teacher, distilled = summaries["distilled"]["teacher"], summaries["distilled"]
    lines = ["# Frosst & Hinton (2017) on MNIST, reproduced by kdrun", "",
             "| model | parameters | test accuracy here (maximum-path leaf) | mixture of leaves | in the paper |",
             "|---|---:|---:|---:|---:|",
             f"| teacher 1200-1200 (`make reproduce-mnist`'s) | {teacher['params']:,} | {100 * teacher['test_acc']:.2f}% "
             f"| | |"]
    for name, label in (("labels", f"soft tree, depth {depth}, labels only"),
                        ("distilled", f"soft tree, depth {depth}, distilled at T={distilled['T']:g}")):
        student = summaries[name]["student"]
        lines.append(f"| {label} | {student['params']:,} | {100 * student['test_acc']:.2f}% | "
                     f"{100 * mixtures[name]:.2f}% | {100 * PAPER[name]:.2f}% |")
    gain = summaries["distilled"]["student"]["test_acc"] - summaries["labels"]["student"]["test_acc"]
    minutes = {name: s["wall_time_s"] / 60 for name, s in summaries.items()}
    lines += ["", f"Distillation adds {100 * gain:+.2f} points (paper: "
                  f"{100 * (PAPER['distilled'] - PAPER['labels']):+.2f}); target: at least +1.",
              f"Wall time: labels {minutes['labels']:.1f} min, distilled {minutes['distilled']:.1f} min "
              f"(teacher: {teacher['source']}) on {distilled['device']}; runs in {out}/<job>/.",
              "", "Figures: tree.png (the distilled tree, top 4 levels) and explain_test0.png (one test image's path)."]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def figures(out: Path) -> None:
    from kdrun.explain import explain_test_image, load_tree, tree_figure

    cfg, data, tree = load_tree(out / "distilled")
    tree_figure(tree, out / "tree.png")
    print(explain_test_image(cfg, data, tree, 0, out / "explain_test0.png"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kdrun.reproduce_soft_tree", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (e.g. outputs/reproduce-soft-tree)")
    parser.add_argument("--preset", default="soft_tree_mnist", help="configs/experiment/<preset>.yaml")
    parser.epilog = "kdrun overrides for every run follow a --: python -m kdrun.reproduce_soft_tree OUT -- epochs=10"
    args = parse_with_overrides(parser, argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        summaries = {name: run_job(name, args.out, args.preset, args.overrides, JOBS) for name in JOBS}
        evaluated = {name: mixture_accuracy(args.out / name) for name in JOBS}
        figures(args.out)
        print(write_report(args.out, summaries, {name: acc for name, (acc, _) in evaluated.items()},
                           evaluated["distilled"][1]))
    except KdrunError as e:
        sys.exit(f"kdrun.reproduce_soft_tree: error: {e}")


if __name__ == "__main__":
    main()
