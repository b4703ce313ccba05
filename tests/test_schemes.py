"""Schemes: teacher ensembles (offline), deep mutual learning (online), born-again networks (self)
and be-your-own-teacher (self_byot)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdrun import Interrupted, KdrunError
from kdrun.losses.feature import byot_hint
from kdrun.losses.response import ensemble_logits, mutual_kl
from kdrun.run import run
from kdrun.schemes.online import Mutual
from kdrun.teachers import Ensemble
from tests.conftest import kdrun_cli, make_cfg, needs_mnist
from tests.test_resume import stop_in_epoch

FAKE = ["dataset=fake", "dataset.num_train=200", "dataset.num_test=64"]
MNIST = ["dataset=mnist", "dataset.train_subset=600", "epochs=2"]
# Two teachers of other architectures, each on a one-epoch recipe (an ensemble's members keep their own).
TWO_TEACHERS = ["teacher=[mlp800,lenet5]", *(f"teacher.members.{m}.{k}={v}" for m in ("mlp800", "lenet5")
                                             for k, v in (("epochs", 1), ("batch_size", 64)))]


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- the maths, by hand -------------------------------------------------------------------------

def test_ensemble_soft_targets_are_the_average_of_the_members_tempered_probabilities():
    # Member A's logits (ln 1, ln 3) give [1/4, 3/4] at T = 1; member B's (0, 0) give [1/2, 1/2].
    a, b = torch.tensor([[0.0, math.log(3)]]), torch.tensor([[0.0, 0.0]])
    combined = ensemble_logits([a, b], "mean_probs", T=1.0)
    assert F.softmax(combined, 1).tolist()[0] == pytest.approx([(1 / 4 + 1 / 2) / 2, (3 / 4 + 1 / 2) / 2])
    # At T = 2 A's logits (ln 9 = 2 ln 3) give the same [1/4, 3/4] again: the average is taken at T.
    combined = ensemble_logits([2 * a, b], "mean_probs", T=2.0)
    assert F.softmax(combined / 2, 1).tolist()[0] == pytest.approx([3 / 8, 5 / 8])
    assert ensemble_logits([a, b], "mean_logits", T=4.0).tolist()[0] == pytest.approx([0.0, math.log(3) / 2])


def test_mutual_kl_by_hand_and_its_targets_are_detached():
    # Peer 1: [1/4, 3/4]; peer 2: [1/2, 1/2] (T = 1). Each learns towards the other.
    z1 = torch.tensor([[0.0, math.log(3)]], requires_grad=True)
    z2 = torch.tensor([[0.0, 0.0]], requires_grad=True)
    kl_21 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(p2 || p1): peer 1's term
    kl_12 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(p1 || p2): peer 2's term
    l1, l2 = mutual_kl([z1, z2], T=1.0)
    assert (l1.item(), l2.item()) == pytest.approx((kl_21, kl_12))
    l1.backward()
    assert z1.grad is not None and z2.grad is None  # peer 1's term moves peer 1 only
    # Three peers: the mean over the two others.
    z3 = torch.tensor([[math.log(3), 0.0]])  # [3/4, 1/4]
    kl_31 = 0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.75)
    assert mutual_kl([z1, z2, z3], T=1.0)[0].item() == pytest.approx((kl_21 + kl_31) / 2)


def test_byot_hint_by_hand():
    f = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    # torch.dist of the two batches, as in the authors' code: one distance over all elements
    assert byot_hint(f, target).item() == pytest.approx(math.sqrt(1 + 4 + 9)) == torch.dist(f, target).item()
    assert byot_hint(target, target).item() == 0


def test_dml_gradients_reach_every_peer():
    torch.manual_seed(0)
    peers = {"teacher": nn.Sequential(nn.Flatten(), nn.Linear(16, 3)),
             "student": nn.Sequential(nn.Flatten(), nn.Linear(16, 3))}
    out = Mutual(peers, ce_weight=0.0, kd_weight=1.0, T=2.0)(torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,)))
    out["loss"].backward()
    for name, peer in peers.items():  # with no cross-entropy, only the mutual terms move them
        assert peer[1].weight.grad.abs().sum() > 0, name
    assert set(out) >= {"teacher/loss_dml", "student/loss_dml", "teacher/logits", "student/logits"}


def test_ensemble_module_outputs_the_combined_logits():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 4), nn.Linear(5, 4)
    x = torch.randn(3, 5)
    probs = F.softmax(Ensemble({"a": a, "b": b}, "mean_probs", T=3.0)(x) / 3, 1)
    expected = (F.softmax(a(x) / 3, 1) + F.softmax(b(x) / 3, 1)) / 2
    assert torch.allclose(probs, expected, atol=1e-6)


# --- offline with a teacher ensemble -----------------------------------------------------------

def test_an_ensemble_of_architectures_reports_each_member_and_the_ensemble(tmp_path):
    summary = run(make_cfg(*FAKE, *TWO_TEACHERS, "deploy_report=true", tmp=tmp_path), tmp_path / "run")
    teacher = summary["teacher"]
    assert set(teacher["members"]) == {"mlp800", "lenet5"} and teacher["source"] == "ensemble"
    # the deployment report: each member, and the ensemble as the sum of its members
    macs = {name: m["deploy"]["macs"] for name, m in teacher["members"].items()}
    assert macs["mlp800"] == 784 * 800 + 800 * 800 + 800 * 10 and teacher["deploy"]["macs"] == sum(macs.values())
    for info in (*teacher["members"].values(), teacher, summary["student"]):
        assert 0 <= info["test_acc"] <= 1 and info["test_images"] == 64
    assert teacher["params"] == sum(m["params"] for m in teacher["members"].values())
    models = {r["model"] for r in _lines(tmp_path / "run")}
    assert models == {"teacher.mlp800", "teacher.lenet5", "student"}
    # Members come from the cache: a single mlp800 teacher with the same recipe is the same model.
    single = run(make_cfg(*FAKE, "teacher=mlp800", "teacher.epochs=1", "teacher.batch_size=64", tmp=tmp_path),
                 tmp_path / "single")
    assert single["teacher"]["source"] == "cache"
    assert single["teacher"]["digest"] == teacher["members"]["mlp800"]["digest"]


@pytest.mark.parametrize("options", [["resnet18", "lenet5"], ["cifar_resnet8", "cifar_wrn_16_1"]])
def test_a_member_is_composed_as_its_option_is_for_a_single_teacher(options):
    """Model files with a defaults list (torchvision's, the CIFAR recipe) compose with it as members too."""
    from omegaconf import OmegaConf

    from kdrun.config import check, member_options

    ensemble = make_cfg(f"teacher=[{','.join(options)}]")
    check(ensemble)
    members = member_options(ensemble)
    tiny = ("epochs", "batch_size")  # what make_cfg sets on the single teacher (a member keeps its own)
    for option in options:
        single = OmegaConf.to_container(make_cfg(f"teacher={option}").teacher)
        member = OmegaConf.to_container(members[option])
        assert {k: v for k, v in member.items() if k not in tiny} == \
            {k: v for k, v in single.items() if k not in (*tiny, "members", "ensemble_seeds")}, option
    assert members[options[0]].lr == (0.1 if options[0] == "resnet18" else 0.05)  # the defaults' recipe reached it


def test_an_ensemble_member_can_come_from_a_checkpoint(tmp_path):
    single = run(make_cfg(*FAKE, "teacher=mlp800", "teacher.epochs=1", tmp=tmp_path), tmp_path / "single")
    summary = run(make_cfg(*FAKE, *TWO_TEACHERS, f"teacher.members.mlp800.checkpoint={single['teacher']['path']}",
                           tmp=tmp_path), tmp_path / "run")
    members = summary["teacher"]["members"]
    assert (members["mlp800"]["source"], members["lenet5"]["source"]) == ("checkpoint", "trained")
    assert members["mlp800"]["test_acc"] == single["teacher"]["test_acc"]


def test_cached_ensemble_logits_give_the_loss_of_the_live_ensemble(tmp_path):
    args = [*FAKE, "teacher=mlp800", "teacher.ensemble_seeds=[0,1]", "student.augment=false"]
    cached = run(make_cfg(*args, tmp=tmp_path), tmp_path / "cached")
    live = run(make_cfg(*args, "cache_teacher_logits=false", tmp=tmp_path), tmp_path / "live")
    assert (cached["teacher_logits"], live["teacher_logits"]) == ("cached", "live")
    assert set(cached["teacher"]["members"]) == {"mlp800.s0", "mlp800.s1"}
    loss = [[r["train/loss_hinton"] for r in _lines(tmp_path / d) if r["model"] == "student"] for d in ("cached", "live")]
    assert loss[0] == pytest.approx(loss[1], rel=1e-4)


@pytest.mark.parametrize("overrides,message", [
    ([*TWO_TEACHERS, "teacher.checkpoint=/x.pt"], r"^teacher.checkpoint=/x.pt: an ensemble takes one checkpoint per member"),
    (["teacher=lenet5", "teacher.checkpoint=/x.pt", "teacher.ensemble_seeds=[0,1]"],
     r"^teacher.ensemble_seeds=\[0, 1\]: the member lenet5 is loaded from a checkpoint, which has no seed to vary"),
    (["teacher=lenet5", "teacher.ensemble_seeds=[0,1]", "kd=at"], r"^kd=at reads the teacher's layers, and an ensemble"),
    (["teacher=[mlp800,lenet5]", "teacher.members.lenet5.epochs=0"], r"^teacher.members.lenet5.epochs=0: must be at least 1"),
    (["teacher=lenet5", "teacher.ensemble_seeds=[0,1]", "teacher.epochs=0"], r"^teacher.epochs=0: must be at least 1"),
    (["ensemble.combine=vote"], r"^ensemble.combine=vote: choose one of auto, mean_probs, mean_logits"),
    (["scheme=online", "kd=at"], r"^scheme=online teaches through soft targets: use kd=hinton"),
    (["scheme=online", "teacher.checkpoint=/x.pt"], r"^scheme=online trains its teacher from scratch"),
    (["scheme=online", "scheme.peers=1"], r"^scheme.peers=1: mutual learning needs at least 2 peers"),
    (["scheme=self", "kd=none"], r"^scheme=self distils each generation from the previous one"),
    (["scheme=self", "scheme.generations=0"], r"^scheme.generations=0: must be at least 1"),
    (["scheme=self_byot", "kd=[hinton,at]"], r"^scheme=self_byot distils with its own loss"),
    (["scheme=self_byot", "scheme.heads=[nope]"], r"^student layer 'nope' is not a module path"),
])
def test_scheme_mistakes_are_one_clear_line(tmp_path, overrides, message):
    with pytest.raises(KdrunError, match=message):
        run(make_cfg("dataset=fake", "student=lenet5", *overrides, tmp=tmp_path), tmp_path / "run")


def test_a_top_level_teacher_setting_that_no_ensemble_member_would_use_is_refused(tmp_path):
    proc = kdrun_cli("teacher=[mlp800,lenet5]", "teacher.members.lenet5.epochs=1", "teacher.epochs=3", "dataset=fake",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert proc.stderr.strip().splitlines()[-1] == (
        "kdrun: error: teacher.epochs=3: with several teachers (mlp800, lenet5) each keeps its own settings: set "
        "teacher.members.<option>.epochs (e.g. teacher.members.mlp800.epochs=3)")


# --- online: deep mutual learning --------------------------------------------------------------

@needs_mnist
def test_online_trains_teacher_and_student_together_from_scratch(tmp_path):
    summary = run(make_cfg(*MNIST, "scheme=online", "teacher=lenet5", tmp=tmp_path), tmp_path / "run")
    assert summary["teacher"]["source"] == "online" and summary["teacher"]["arch"] == "lenet5"
    assert summary["student"]["arch"] == "mlp800" and summary["student"]["test_acc"] > 0.5
    lines = _lines(tmp_path / "run")
    assert [(r["model"], r["epoch"]) for r in lines] == [("teacher", 1), ("student", 1), ("teacher", 2), ("student", 2)]
    assert all({"train/loss_ce", "train/loss_dml", "train/acc", "val/acc"} <= set(r) for r in lines)
    ckpts = {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert {"teacher_best.pt", "student_best.pt", "online_last.pt"} <= ckpts
    assert not (tmp_path / "teachers").exists() or not any((tmp_path / "teachers").iterdir())  # no cached teacher


def test_online_peers_resume_after_an_interruption_like_an_uninterrupted_run(tmp_path, monkeypatch):
    args = [*FAKE, "scheme=online", "scheme.peers=3", "epochs=3", "deploy_report=true"]
    full = run(make_cfg(*args, tmp=tmp_path), tmp_path / "full")
    assert set(full["models"]) == {"peer1", "peer2", "peer3"} and full["teacher"] is None
    best = max(full["models"].values(), key=lambda m: m["best_val_acc"])
    assert full["student"]["best_val_acc"] == best["best_val_acc"]  # the headline peer is picked on validation
    with stop_in_epoch(2, monkeypatch), pytest.raises(Interrupted):
        run(make_cfg(*args, tmp=tmp_path), tmp_path / "cut")
    resumed = run(make_cfg(*args, "resume=true", tmp=tmp_path), tmp_path / "cut")

    def strip(d):
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_sec")} for r in _lines(d)]

    assert strip(tmp_path / "cut") == strip(tmp_path / "full")
    timed = ("deploy",)  # the deployment report's latencies are measured, not replayed
    assert [{k: v for k, v in m.items() if k not in timed} for m in resumed["models"].values()] == \
        [{k: v for k, v in m.items() if k not in timed} for m in full["models"].values()]
    assert all(m["deploy"]["macs"] > 0 for m in resumed["models"].values())


# --- self: born-again networks and be your own teacher -----------------------------------------

@needs_mnist
def test_born_again_generation_k_learns_from_generation_k_minus_1_frozen(tmp_path, monkeypatch):
    import kdrun.schemes.self as born_again

    seen, original = {}, born_again.distill

    def spy(ctx, methods, teacher, teacher_info, role="student"):
        result = original(ctx, methods, teacher, teacher_info, role)
        # After training: the teacher was frozen, and its weights never moved.
        seen[role] = teacher and ({k: v.clone() for k, v in teacher.state_dict().items()},
                                  teacher.training, any(p.requires_grad for p in teacher.parameters()))
        return result

    monkeypatch.setattr(born_again, "distill", spy)
    summary = run(make_cfg(*MNIST, "scheme=self", "scheme.generations=2", "deploy_report=true", tmp=tmp_path),
                  tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints"
    assert seen["gen0"] is None  # generation 0 learns from the labels
    for k in (1, 2):
        weights, training, trainable = seen[f"gen{k}"]
        previous = torch.load(ckpt / f"gen{k - 1}_best.pt", weights_only=True)["model"]
        assert all(torch.equal(weights[key], previous[key]) for key in previous)
        assert not training and not trainable
    assert set(summary["models"]) == {"gen0", "gen1", "gen2"} and summary["student"] == summary["models"]["gen2"]
    assert 0 < summary["ensemble"]["test_acc"] <= 1
    assert summary["ensemble"]["deploy"]["macs"] == 3 * summary["student"]["deploy"]["macs"]  # three generations
    assert summary["teacher"]["deploy"] == summary["models"]["gen0"]["deploy"]
    assert {r["model"] for r in _lines(tmp_path / "run")} == {"gen0", "gen1", "gen2"}
    gen1 = [r for r in _lines(tmp_path / "run") if r["model"] == "gen1"]
    assert all("train/loss_hinton" in r for r in gen1)


@needs_mnist
def test_byot_reports_every_exit_head(tmp_path):
    summary = run(make_cfg(*MNIST, "scheme=self_byot", "deploy_report=true", tmp=tmp_path), tmp_path / "run")
    assert set(summary["models"]) == {"student", "head1"} and summary["models"]["head1"]["layer"] == "act1"
    # a head is measured as it runs: the whole backbone, then the head
    assert summary["models"]["head1"]["deploy"]["macs"] > summary["student"]["deploy"]["macs"]
    assert summary["student"]["test_acc"] > 0.5 and summary["models"]["head1"]["test_acc"] > 0.3
    head = [r for r in _lines(tmp_path / "run") if r["model"] == "head1"]
    # One head, the nearest to the deepest classifier: the authors' code gives that one no hint.
    assert len(head) == 2 and all({"train/loss_ce", "train/loss_kd"} <= set(r) and "train/loss_hint" not in r
                                  for r in head)
    assert {"student_best.pt", "head1_best.pt", "byot_last.pt"} <= {p.name for p in (tmp_path / "run" / "checkpoints").iterdir()}


def test_byot_heads_on_a_torchvision_resnet(tmp_path):
    cifar = ["dataset=fake", "dataset.channels=3", "dataset.image_size=32", "dataset.num_train=64",
             "dataset.num_test=32", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]"]
    summary = run(make_cfg(*cifar, "scheme=self_byot", "student=resnet18", tmp=tmp_path), tmp_path / "run")
    assert [summary["models"][f"head{i}"]["layer"] for i in (1, 2, 3)] == ["layer1", "layer2", "layer3"]


def test_mutual_learning_under_bf16_autocast_returns_full_precision_losses():
    peers = {"a": nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), "b": nn.Sequential(nn.Flatten(), nn.Linear(16, 3))}
    out = Mutual(peers, 1.0, 1.0, 2.0, amp_dtype=torch.bfloat16)(torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,)))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])


def test_born_again_takes_feature_methods_between_generations(tmp_path):
    summary = run(make_cfg(*FAKE, "scheme=self", "scheme.generations=1", "student=lenet5", "kd=[hinton,at]",
                           tmp=tmp_path), tmp_path / "run")
    gen1 = [r for r in _lines(tmp_path / "run") if r["model"] == "gen1"]
    assert gen1 and all({"train/loss_hinton", "train/loss_at"} <= set(r) for r in gen1)
    assert summary["kd"] == ["hinton", "at"] and set(summary["models"]) == {"gen0", "gen1"}


@pytest.mark.parametrize("scheme", ["online", "self", "self_byot"])
def test_dry_run_of_every_scheme_trains_nothing(scheme, tmp_path, capsys):
    kd = ["kd=[hinton,at]", "student=lenet5"] if scheme == "self" else []
    summary = run(make_cfg(*FAKE, f"scheme={scheme}", "dry_run=true", *kd, tmp=tmp_path), tmp_path / "run")
    assert summary["status"] == "dry_run"
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    if scheme == "self":  # generation 1 reads generation 0's layers: the student's own
        assert {(r["student"], r["teacher"]) for r in summary["layers"]} == {("features.2", "features.2"),
                                                                               ("features.5", "features.5")}
