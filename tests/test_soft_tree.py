"""The soft decision tree (Frosst & Hinton 2017): its maths against hand-computed values, training
and distilling it through kdrun, its checkpoints and resume, and its two figures."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from kdrun import Interrupted, KdrunError
from kdrun.checkpoint import load_weights
from kdrun.methods.base import Distiller
from kdrun.models import build_model
from kdrun.models.soft_tree import SoftTree, path_log_probs
from kdrun.run import run
from kdrun.schemes.online import Mutual
from tests.conftest import DATA_DIR, HAS_MNIST, make_cfg
from tests.test_resume import _student_lines, stop_in_epoch

LN3 = math.log(3)


def tiny_tree(depth: int, in_features: int, weights, num_classes: int = 2, penalty: float = 1.0) -> SoftTree:
    """A tree over `in_features` inputs whose inner nodes have these filters and zero biases."""
    tree = build_model("soft_tree", num_classes, 1, 1, depth=depth, penalty=penalty)
    tree.inner = torch.nn.Linear(in_features, 2**depth - 1)
    with torch.no_grad():
        tree.inner.weight.copy_(torch.tensor(weights))
        tree.inner.bias.zero_()
    return tree


def test_path_probabilities_of_the_leaves_sum_to_one_for_every_input():
    torch.manual_seed(0)
    activations = 20 * torch.randn(64, 2**6 - 1)  # decisions from very soft to very hard
    log_inner, log_leaf = path_log_probs(activations, 6)
    assert log_leaf.shape == (64, 64) and log_inner.shape == (64, 63)
    torch.testing.assert_close(log_leaf.exp().sum(1), torch.ones(64))
    # ...and each inner node's path probability is the sum over the leaves below it (node 2: the right half).
    torch.testing.assert_close(log_inner[:, 2].exp(), log_leaf[:, 32:].exp().sum(1))


def test_leaf_weighted_loss_outputs_and_predictions_equal_hand_values():
    # Depth 1: p(right) = sigmoid(ln 3) = 3/4; left leaf Q = (1/2, 1/2), right leaf Q = (3/4, 1/4).
    tree = tiny_tree(1, 1, [[1.0]], penalty=1.0)
    with torch.no_grad():
        tree.leaves.copy_(torch.tensor([[0.0, 0.0], [LN3, 0.0]]))
    x, y = torch.tensor([[LN3]]), torch.tensor([0])
    out = Distiller(tree).train()(x, y)
    # The paper's loss: -sum_l P_l log Q_l,y = -(1/4 ln 1/2 + 3/4 ln 3/4); not the mixture's cross-entropy.
    assert out["loss_ce"].item() == pytest.approx(-(0.25 * math.log(0.5) + 0.75 * math.log(0.75)))
    # The penalty at the root, a = 3/4: -(0.5 ln 3/4 + 0.5 ln 1/4).
    assert out["loss_tree_penalty"].item() == pytest.approx(-(0.5 * math.log(0.75) + 0.5 * math.log(0.25)))
    assert out["loss"].item() == pytest.approx(out["loss_ce"].item() + out["loss_tree_penalty"].item())
    # Soft targets T = (1/2, 1/2): -sum_l P_l sum_k T_k log Q_lk.
    soft = tree.label_loss(torch.tensor([[0.5, 0.5]]))
    assert soft.item() == pytest.approx(-(0.25 * math.log(0.5) + 0.75 * 0.5 * (math.log(0.75) + math.log(0.25))))
    # Label smoothing 0.2 on 2 classes: the target (0.9, 0.1), as F.cross_entropy would use.
    smoothed = tree.label_loss(y, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(-(0.25 * math.log(0.5) + 0.75 * (0.9 * math.log(0.75) + 0.1 * math.log(0.25))))
    # Training outputs the leaves' log-distributions averaged with the path probabilities...
    expected = [0.25 * math.log(0.5) + 0.75 * math.log(0.75), 0.25 * math.log(0.5) + 0.75 * math.log(0.25)]
    torch.testing.assert_close(out["logits"], torch.tensor([expected]))
    # ...whose cross-entropy is the paper's loss less a Jensen gap, which closes as the decision hardens.
    ce = torch.nn.functional.cross_entropy(out["logits"], y).item()
    assert ce < out["loss_ce"].item() - 0.01
    hard = Distiller(tree).train()(100 * x, y)
    assert torch.nn.functional.cross_entropy(hard["logits"], y).item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert hard["loss_ce"].item() == pytest.approx(-math.log(0.75), abs=1e-6)
    tree.eval()
    torch.testing.assert_close(tree(x).exp(), torch.tensor([[0.75, 0.25]]))  # the right leaf: greatest path
    tree.prediction = "mixture"  # 1/4 (1/2, 1/2) + 3/4 (3/4, 1/4)
    torch.testing.assert_close(tree(x).exp(), torch.tensor([[11 / 16, 5 / 16]]))


def test_penalty_equals_a_hand_computation_on_a_depth_2_tree_and_averages_over_batches():
    # p_0 = (3/4, 1/4), p_1 = (1/2, 3/4), p_2 = (3/4, 1/2) on the inputs x1 = (1, 0) and x2 = (0, 1).
    tree = tiny_tree(2, 2, [[LN3, -LN3], [0.0, LN3], [LN3, 0.0]], penalty=1.0)
    tree.train()
    tree(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    # Path probabilities: P^1 = 1 - p_0 = (1/4, 3/4), P^2 = p_0 = (3/4, 1/4), so
    # a_0 = 1/2, a_1 = (1/4 * 1/2 + 3/4 * 3/4) / 1 = 11/16, a_2 = (3/4 * 3/4 + 1/4 * 1/2) / 1 = 11/16;
    # C = -(1 * ln 1/2 + 1/2 * 2 * (0.5 ln 11/16 + 0.5 ln 5/16)), lambda = 1 and 2^-d at depth d.
    expected = -(math.log(0.5) + 0.5 * (math.log(11 / 16) + math.log(5 / 16)))
    assert tree.regularizers()["tree_penalty"].item() == pytest.approx(expected)
    # A second batch (x1 alone). The root's window is 1 batch: a_0 = p_0(x1) = 3/4. Depth 1 averages
    # over 2 batches (decay 1/2) the per-image means of P^i p_i and P^i (batch 1: 11/32 and 1/2 at both
    # nodes; batch 2: 1/8 and 1/4 at node 1, 9/16 and 3/4 at node 2), the first into zeros:
    # a_1 = (1/2 * 1/2 * 11/32 + 1/2 * 1/8) / (1/2 * 1/2 * 1/2 + 1/2 * 1/4) = 19/32,
    # a_2 = (1/2 * 1/2 * 11/32 + 1/2 * 9/16) / (1/2 * 1/2 * 1/2 + 1/2 * 3/4) = 47/64.
    tree(torch.tensor([[1.0, 0.0]]))
    alphas = [3 / 4, 19 / 32, 47 / 64]
    expected = -sum(0.5**d * (0.5 * math.log(a) + 0.5 * math.log(1 - a)) for d, a in zip([0, 1, 1], alphas))
    assert tree.regularizers()["tree_penalty"].item() == pytest.approx(expected)


def test_maximum_path_prediction_is_the_leaf_of_greatest_path_probability():
    torch.manual_seed(0)
    tree = build_model("soft_tree", 10, 1, 8, depth=5).eval()
    torch.nn.init.normal_(tree.leaves)
    x = torch.randn(32, 1, 8, 8)
    _, log_leaf, log_q, _ = tree.paths(x)
    best = log_leaf.argmax(1)
    torch.testing.assert_close(tree(x), log_q[best])
    nodes, p_right, leaf = tree.max_path(x[3])
    assert leaf == int(best[3]) and len(nodes) == 5 and nodes[0] == 0
    # The path's branch probabilities multiply to the leaf's path probability.
    chosen = [p if (leaf >> (4 - d)) & 1 else 1 - p for d, p in enumerate(p_right)]
    assert math.prod(chosen) == pytest.approx(log_leaf[3, leaf].exp().item(), rel=1e-4)
    tree.prediction = "mixture"
    torch.testing.assert_close(tree(x), torch.logsumexp(log_leaf[:, :, None] + log_q[None], 1))


def test_soft_tree_settings_are_checked_before_any_training(tmp_path):
    # With the config's value checks, naming the node: a teacher would otherwise train first.
    with pytest.raises(KdrunError, match=r"^student.kwargs.depth=0: must be between 1 and 16"):
        run(make_cfg("student=soft_tree", "student.kwargs.depth=0", tmp=tmp_path), tmp_path / "r")
    with pytest.raises(KdrunError, match=r"^model soft_tree: no argument 'width' \(its kwargs are depth, beta, "
                                         r"penalty, ema_window, prediction\): check the model's kwargs "
                                         r"\(teacher.kwargs\)$"):
        run(make_cfg("teacher=soft_tree", "+teacher.kwargs.width=3", tmp=tmp_path), tmp_path / "r")
    assert not (tmp_path / "teachers").exists()
    with pytest.raises(KdrunError, match=r"soft_tree kwargs.prediction=vote: choose one of max_path, mixture"):
        build_model("soft_tree", 10, 1, 28, prediction="vote")


TREE = ["dataset=fake", "dataset.num_train=300", "dataset.image_size=8", "student=soft_tree",
        "student.kwargs.depth=3", "student.batch_size=32"]


@pytest.fixture(scope="module")
def distilled_tree(tmp_path_factory):
    """A depth-3 tree distilled from an 800-800 teacher on fake data, with Hydra's config record."""
    tmp = tmp_path_factory.mktemp("tree")
    cfg = make_cfg(*TREE, "teacher=mlp800", "kd=hinton", "epochs=2", tmp=tmp)
    summary = run(cfg, tmp / "run")
    (tmp / "run" / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp / "run" / ".hydra" / "config.yaml")  # what Hydra writes for a CLI run
    return tmp / "run", summary


def test_a_distilled_tree_trains_and_its_checkpoint_round_trips(distilled_tree):
    run_dir, summary = distilled_tree
    assert summary["student"]["arch"] == "soft_tree" and summary["teacher_logits"] == "cached"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    student = [line for line in lines if line["model"] == "student"]
    assert {"train/loss_ce", "train/loss_hinton", "train/loss_tree_penalty"} <= set(student[-1])
    tree = build_model("soft_tree", 10, 1, 8, depth=3)
    record = load_weights(tree, run_dir / "checkpoints" / "student_best.pt", "test", "soft_tree", 10, 1)
    assert record["model"]["ema_den"][0] == pytest.approx(1.0)  # the averages travel with the weights
    assert record["model"]["ema_num"].abs().sum() > 0


def test_a_resumed_tree_matches_an_uninterrupted_one(tmp_path, monkeypatch):
    args = [*TREE, "kd=none", "epochs=3"]
    run(make_cfg(*args, tmp=tmp_path), tmp_path / "full")
    with stop_in_epoch(2, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*args, tmp=tmp_path), tmp_path / "cut")
    run(make_cfg(*args, "resume=true", tmp=tmp_path), tmp_path / "cut")
    assert _student_lines(tmp_path / "cut") == _student_lines(tmp_path / "full")
    full, cut = (torch.load(tmp_path / d / "checkpoints" / "student_last.pt", weights_only=True)["model"]
                 for d in ("full", "cut"))
    for key in ("ema_num", "ema_den", "inner.weight", "leaves"):
        assert torch.equal(full[key], cut[key]), key


def test_mutual_learning_gives_a_tree_peer_the_terms_a_distiller_gives_it():
    """scheme=online trains a tree peer as scheme=offline trains a tree student: on its leaf-weighted
    loss (label smoothing included) and its penalty, not the cross-entropy of its training output."""
    torch.manual_seed(0)
    peers = {name: build_model("soft_tree", 3, 1, 4, depth=2) for name in ("teacher", "student")}
    for tree in peers.values():
        with torch.no_grad():  # uneven leaves: the two losses differ (uniform ones give ln 3 both)
            tree.leaves.normal_()
    alone = copy.deepcopy(peers)  # the same trees, moving averages included, for the Distiller
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))
    out = Mutual(peers, ce_weight=0.7, kd_weight=0.3, T=2.0, label_smoothing=0.1)(x, y)
    for name, tree in alone.items():
        offline = Distiller(tree, ce_weight=0.7, label_smoothing=0.1)(x, y)
        assert out[f"{name}/loss_ce"].item() == pytest.approx(offline["loss_ce"].item())
        assert out[f"{name}/loss_tree_penalty"].item() == pytest.approx(offline["loss_tree_penalty"].item())
        plain = 0.7 * torch.nn.functional.cross_entropy(out[f"{name}/logits"], y, label_smoothing=0.1)
        assert out[f"{name}/loss_ce"].item() > plain.item() + 1e-3
        assert out[f"{name}/loss"].item() == pytest.approx(sum(out[f"{name}/{k}"].item() for k in
                                                               ("loss_ce", "loss_tree_penalty", "loss_dml")))


def test_an_online_run_of_trees_logs_each_peers_penalty(tmp_path):
    args = [a for a in TREE if not a.startswith("dataset.num_train")]
    cfg = make_cfg(*args, "dataset.num_train=64", "teacher=soft_tree", "teacher.kwargs.depth=2",
                   "student.kwargs.depth=2", "scheme=online", "epochs=1", tmp=tmp_path)
    run(cfg, tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(line["model"] for line in lines) == ["student", "teacher"]
    for line in lines:
        assert line["train/loss_tree_penalty"] > 0
        assert line["train/loss"] == pytest.approx(line["train/loss_ce"] + line["train/loss_tree_penalty"]
                                                   + line["train/loss_dml"], rel=1e-5)


def test_explain_writes_the_tree_and_a_path(distilled_tree, capsys):
    import tomllib

    from PIL import Image

    from kdrun.explain import main
    from tests.conftest import ROOT

    run_dir, _ = distilled_tree
    main([str(run_dir)])
    main([str(run_dir), "--index", "5"])
    Image.new("L", (28, 28), 255).save(run_dir / "blank.png")
    main([str(run_dir), "--image", str(run_dir / "blank.png"), "--out", str(run_dir / "blank_path.png")])
    printed = capsys.readouterr().out
    for png in ("tree.png", "explain_test5.png", "blank_path.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test image 5 (label" in printed and "depth 2  node" in printed and "blank.png: the path" in printed
    with pytest.raises(SystemExit, match="--index=256: the test split has images 0 to 255"):
        main([str(run_dir), "--index", "256"])
    with pytest.raises(SystemExit, match=r"RUN_DIR=.*: no .hydra/config.yaml there"):
        main([str(run_dir / "checkpoints")])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["kdrun-explain"] == "kdrun.explain:main"


def test_the_reproduction_report_puts_both_trees_next_to_the_paper(tmp_path):
    from kdrun.reproduce_soft_tree import write_report

    def job(acc, mixture):
        return {"summary": {"teacher": {"params": 2395210, "test_acc": 0.9923, "source": "cache"},
                            "student": {"params": 202735, "test_acc": acc}, "T": 1.0, "wall_time_s": 60.0,
                            "device": "cpu"}, "mixture": mixture}

    text = write_report(tmp_path, {0: {"labels": job(0.9600, 0.9650), "distilled": job(0.9650, 0.9700)},
                                   1: {"labels": job(0.9620, 0.9660), "distilled": job(0.9640, 0.9690)}}, depth=8)
    # Means and sample standard deviations over the seeds: (96.50, 96.40) -> 96.45 ± 0.07.
    assert "| soft tree, depth 8, labels only | 202,735 | 96.10 ± 0.14 | 96.55 ± 0.07 | 94.45 |" in text
    assert "| soft tree, depth 8, distilled at T=1 | 202,735 | 96.45 ± 0.07 | 96.95 ± 0.07 | 96.76 |" in text
    assert "| 1 | 96.20 | 96.40 | +0.20 | 96.60 | 96.90 |" in text
    assert "Distillation adds 0.35 ± 0.21 points (paper: +2.31)" in text and "4.0 min on cpu" in text
    assert (tmp_path / "report.md").read_text() == text


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MNIST, reason="no MNIST here")
def test_tiny_soft_tree_reproduction_writes_its_report_and_figures(tmp_path):
    from kdrun.reproduce_soft_tree import main

    main([str(tmp_path / "out"), "--seeds", "0", "--", "dataset.train_subset=300", "teacher.epochs=1", "epochs=1",
          "student.kwargs.depth=3", "progress=false", f"teacher_cache={tmp_path / 'teachers'}", f"data_dir={DATA_DIR}"])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| soft tree, depth 3, labels only |" in report and "| soft tree, depth 3, distilled at T=1 |" in report
    for png in ("tree.png", "explain_test0.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    assert (tmp_path / "out" / "s0" / "distilled" / "summary.json").is_file()


def test_explain_levels_full_checkpoint_and_a_bad_levels(distilled_tree, tmp_path, capsys):
    """kdrun-explain's flags: --levels N draws N of the depth-3 tree's levels, --full all of them (a row of
    1.3 inches per level plus the leaves' row, at 100 dpi), --checkpoint loads those weights, and
    --levels 0 is one line."""
    from PIL import Image

    from kdrun.explain import main

    run_dir, _ = distilled_tree
    main([str(run_dir), "--levels", "2", "--out", str(tmp_path / "top2.png")])
    main([str(run_dir), "--full", "--levels", "1", "--out", str(tmp_path / "full.png")])  # --full wins
    for png, levels in (("top2.png", 2), ("full.png", 3)):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(tmp_path / png).height == round(100 * 1.3 * (levels + 1)), png

    last = run_dir / "checkpoints" / "student_last.pt"
    main([str(run_dir), "--checkpoint", str(last), "--index", "1"])
    assert (run_dir / "explain_test1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test image 1 (label" in capsys.readouterr().out
    # Weights of the file given, not student_best.pt's: every leaf made to say class 7
    record = torch.load(last, weights_only=True)
    record["model"]["leaves"][:, 7] = 50.0
    torch.save(record, tmp_path / "sevens.pt")
    main([str(run_dir), "--checkpoint", str(tmp_path / "sevens.pt"), "--index", "1", "--out", str(tmp_path / "7.png")])
    assert "prediction: 7 (maximum-path leaf)" in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:
        main([str(run_dir), "--levels", "0"])
    assert str(e.value.code) == "kdrun-explain: error: --levels=0: draw at least 1 level"
