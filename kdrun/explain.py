"""`kdrun-explain`: what a soft decision tree (student=soft_tree) learned, and why it decides as it does.

    kdrun-explain RUN_DIR                   RUN_DIR/tree.png: the tree's top 4 levels (--levels N, --full)
    kdrun-explain RUN_DIR --index N         the path of test image N: RUN_DIR/explain_test<N>.png + a list
    kdrun-explain RUN_DIR --image FILE      the same for an image file

The tree is the run's student (checkpoints/student_best.pt, or --checkpoint), loaded by
kdrun.export.load_model from what the file records; the run's config (.hydra/config.yaml) gives the
test images of --index (the dataset is read for them only). Figures are drawn with matplotlib's Figure (no pyplot, no display), as
in kdrun/plots.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from kdrun import KdrunError


def load_tree(run_dir: Path, checkpoint: Optional[Path] = None, data_dir: Optional[str] = None):
    """(the run's config, its soft decision tree in eval mode, the tree's ModelInfo), the tree loaded
    as kdrun.export.load_model loads any model kdrun wrote."""
    from omegaconf import OmegaConf

    from kdrun.export import load_model

    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise KdrunError(f"RUN_DIR={run_dir}: no .hydra/config.yaml there; give the directory of a kdrun run")
    cfg = OmegaConf.load(config)
    if data_dir is not None:
        cfg.data_dir = data_dir
    if cfg.student.name != "soft_tree":
        raise KdrunError(f"RUN_DIR={run_dir}: its student is {cfg.student.name}, not a soft decision tree; "
                         "explain a run of student=soft_tree")
    tree, info = load_model(checkpoint or run_dir, data_dir=cfg.data_dir)
    if info.arch != "soft_tree":
        raise KdrunError(f"--checkpoint={checkpoint}: holds a {info.arch}, not a soft decision tree")
    return cfg, tree, info


def run_data(cfg):
    """The run's dataset, on the CPU (for its test images)."""
    from kdrun.data import build_data

    return build_data(cfg.dataset, cfg.data_dir, torch.device("cpu"))


def leaf_reach(tree) -> torch.Tensor:
    """The share of the training data that reaches each leaf, from the moving averages the
    penalty keeps at the last level of inner nodes (uniform for a tree that has none)."""
    last = slice(2 ** (tree.depth - 1) - 1, 2**tree.depth - 1)
    num, den = tree.ema_num[last], tree.ema_den[last]
    reach = torch.stack((den - num, num), dim=1).flatten().clamp_min(0)
    return reach / reach.sum() if reach.sum() > 0 else torch.full_like(reach, 1 / len(reach))


def _image(ax, picture: torch.Tensor, signed: bool) -> None:
    """Draws a (C, H, W) filter (signed: blue negative, red positive) or image (grey or colour)."""
    ax.set_xticks([])
    ax.set_yticks([])
    picture = picture.detach().cpu()
    if signed:
        scale = float(picture.abs().max()) or 1.0
        if picture.shape[0] == 1:
            ax.imshow(picture[0].numpy(), cmap="bwr", vmin=-scale, vmax=scale)
        else:
            ax.imshow((0.5 + picture / (2 * scale)).permute(1, 2, 0).clamp(0, 1).numpy())
    elif picture.shape[0] == 1:
        ax.imshow(picture[0].numpy(), cmap="gray_r")
    else:
        ax.imshow(picture.permute(1, 2, 0).clamp(0, 1).numpy())


def _bars(ax, dist: torch.Tensor, title: str, used: bool = True) -> None:
    ax.bar(range(len(dist)), dist.tolist(), color="tab:blue" if used else "lightgrey")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(len(dist)) if len(dist) <= 10 else [])
    ax.tick_params(labelsize=5, length=0)
    ax.set_yticks([])
    ax.set_title(title, fontsize=8, fontweight="bold")


def tree_figure(tree, path: Path, levels: int = 4) -> Path:
    """The paper's figure: each inner node's filter (its input's shape), laid out as the tree, and
    under the last level drawn each leaf's class distribution with its most likely class, or, for a
    tree deeper than `levels`, each subtree's (its leaves' distributions, weighted by the share of
    the training data that reaches them). Grey bars: hardly any training data gets there."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    levels = min(levels, tree.depth)
    width, height = max(8.0, 0.6 * 2**levels), 1.3 * (levels + 1)
    fig = Figure(figsize=(width, height))
    row = 0.94 / (levels + 1)  # a row per level, as fractions of the figure (the top 6%: the title)
    size = min(0.8 * row * height / width, 0.9 / 2 ** (levels - 1))  # a filter's width: square, within its slot

    def centre(level: int, j: int) -> tuple[float, float]:
        return (j + 0.5) / 2**level, 0.94 - (level + 0.5) * row

    filters = tree.filters()
    for level in range(levels):
        for j in range(2**level):
            x, y = centre(level, j)
            ax = fig.add_axes((x - size / 2, y - 0.4 * row, size, 0.8 * row))
            _image(ax, filters[2**level - 1 + j], signed=True)
            for child in (2 * j, 2 * j + 1):  # a line to each child, left then right
                cx, cy = centre(level + 1, child)
                fig.add_artist(Line2D([x, cx], [y - 0.4 * row, cy + 0.4 * row], color="grey", linewidth=0.6))
    dists, reach = tree.leaf_distributions(), leaf_reach(tree)
    per = 2 ** (tree.depth - levels)  # leaves under each box of the bottom row
    bar_width = min(0.85 / 2**levels, 2.5 * size)
    for j in range(2**levels):
        weights = reach[j * per:(j + 1) * per]
        dist = dists[j * per:(j + 1) * per]
        dist = (weights @ dist) / weights.sum() if weights.sum() > 0 else dist.mean(0)
        x, y = centre(levels, j)
        ax = fig.add_axes((x - bar_width / 2, y - 0.35 * row, bar_width, 0.6 * row))
        # Grey: a leaf (subtree) that hardly any training data reaches (under a tenth of an even share).
        _bars(ax, dist, str(int(dist.argmax())), used=float(weights.sum()) >= 0.1 / 2**levels)
    what = "leaves" if levels == tree.depth else f"top {levels} of {tree.depth} levels; bottom row: subtrees"
    fig.suptitle(f"soft decision tree, depth {tree.depth} ({what})", fontsize=10)
    fig.savefig(path, dpi=100 if levels <= 5 else 60)
    return path


def path_figure(tree, x: torch.Tensor, shown: torch.Tensor, path: Path, title: str) -> tuple[list, int]:
    """The path of greatest probability for one (normalised) image `x`: at each node its filter, the
    image weighted by the filter (red pushes right, blue left) and the probability of going right,
    then the leaf's distribution. `shown` is the image as a person sees it. Returns the path."""
    from matplotlib.figure import Figure

    nodes, p_right, leaf = tree.max_path(x)
    filters = tree.filters()
    fig = Figure(figsize=(1.5 * (len(nodes) + 2), 3.6), layout="constrained")
    axes = fig.subplots(2, len(nodes) + 2, squeeze=False)
    _image(axes[0, 0], shown, signed=False)
    axes[0, 0].set_title("image", fontsize=8)
    axes[1, 0].axis("off")
    for col, (node, p) in enumerate(zip(nodes, p_right), start=1):
        _image(axes[0, col], filters[node], signed=True)
        axes[0, col].set_title(f"node {node}\np(right)={p:.2f} {'→' if p >= 0.5 else '←'}", fontsize=8)
        _image(axes[1, col], filters[node] * x.view_as(filters[node]), signed=True)
        axes[1, col].set_xlabel("image × filter", fontsize=7)
    dist = tree.leaf_distributions()[leaf]
    _bars(axes[0, -1], dist, f"leaf {leaf}: {int(dist.argmax())}")
    axes[1, -1].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    return list(zip(nodes, p_right)), leaf


def _file_image(file: Path, info) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised image, image in [0, 1]) from an image file, resized to the model's input (ModelInfo)."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.functional import pil_to_tensor, resize

    try:
        picture = Image.open(file).convert("L" if info.in_channels == 1 else "RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise KdrunError(f"--image={file}: not a readable image ({e})") from None
    shown = resize(pil_to_tensor(picture).float() / 255, [info.image_size, info.image_size], antialias=True)
    return (shown - _stat(info.mean)) / _stat(info.std), shown


def explain_image(tree, x: torch.Tensor, shown: torch.Tensor, out: Path, name: str, label: Optional[int] = None) -> str:
    """Writes the path figure and returns its printed list."""
    from kdrun.models.soft_tree import mixture_log_probs

    with torch.no_grad():
        _, log_leaf, log_q, _ = tree.paths(x[None])
        mixture = int(mixture_log_probs(log_leaf, log_q).argmax())
    title = f"{name}" + (f" (label {label})" if label is not None else "")
    steps, leaf = path_figure(tree, x, shown, out, title)
    dist = tree.leaf_distributions()[leaf]
    top = dist.argsort(descending=True)[:3]
    lines = [f"{title}: the path of greatest probability ends at leaf {leaf}"]
    for depth, (node, p) in enumerate(steps):
        lines.append(f"  depth {depth}  node {node:<5d} p(right)={p:.3f}  -> {'right' if p >= 0.5 else 'left'}")
    lines.append(f"  leaf {leaf}: " + ", ".join(f"class {int(k)} {float(dist[k]):.3f}" for k in top))
    lines.append(f"prediction: {int(dist.argmax())} (maximum-path leaf); mixture of all leaves: {mixture}")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="kdrun-explain", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a kdrun run directory whose student is soft_tree")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, help="explain this test image (its position in the test split)")
    which.add_argument("--image", type=Path, help="explain this image file")
    parser.add_argument("--levels", type=int, default=4, help="tree.png: how many levels to draw (default 4)")
    parser.add_argument("--full", action="store_true", help="tree.png: draw the whole tree")
    parser.add_argument("--checkpoint", type=Path, help="these weights instead of checkpoints/student_best.pt")
    parser.add_argument("--data-dir", help="where the datasets are, if not where the run found them")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: in RUN_DIR)")
    args = parser.parse_args(argv)
    try:
        if args.levels < 1:
            raise KdrunError(f"--levels={args.levels}: draw at least 1 level")
        cfg, tree, info = load_tree(args.run_dir, args.checkpoint, args.data_dir)
        if args.index is None and args.image is None:
            out = tree_figure(tree, args.out or args.run_dir / "tree.png", tree.depth if args.full else args.levels)
            print(f"wrote {out}")
            return
        if args.image is not None:
            x, shown = _file_image(args.image, info)
            out = args.out or args.run_dir / f"explain_{args.image.stem}.png"
            print(explain_image(tree, x, shown, out, args.image.name))
        else:
            print(explain_test_image(cfg, run_data(cfg), tree, args.index,
                                     args.out or args.run_dir / f"explain_test{args.index}.png"))
    except KdrunError as e:
        sys.exit(f"kdrun-explain: error: {e}")


def explain_test_image(cfg, data, tree, index: int, out: Path) -> str:
    """explain_image for the test split's image `index`."""
    if not 0 <= index < data.sizes["test"]:
        raise KdrunError(f"--index={index}: the test split has images 0 to {data.sizes['test'] - 1}")
    batch = 1024
    x, y = next(b for i, b in enumerate(data.loader("test", batch)) if i == index // batch)
    x, label = x[index % batch], int(y[index % batch])
    shown = (x * _stat(cfg.dataset.std) + _stat(cfg.dataset.mean)).clamp(0, 1)
    return explain_image(tree, x, shown, out, f"test image {index}", label)


def _stat(values) -> torch.Tensor:
    """A dataset's per-channel mean or std, shaped to broadcast over an image."""
    return torch.tensor(list(values)).view(-1, 1, 1)


if __name__ == "__main__":
    main()
