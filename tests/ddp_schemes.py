"""Run under torchrun by tests/test_distributed.py (slow): every scheme, and the methods with a first stage,
a trained part of their own or feature taps, in one launch (imports are paid once). Each run's
directory is OUT/<name>; the test reads them back."""
from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import make_cfg

FAKE = ["dataset=fake", "dataset.num_train=256", "dataset.num_test=64", "teacher.epochs=1", "epochs=2"]
LENET = [*FAKE, "teacher=lenet5", "student=lenet5"]
CASES = {
    "fitnet_hint_stage": [*LENET, "kd=fitnet", "kd.fitnet.hint_epochs=1"],  # unused student layers in stage 1
    "ft": [*LENET, "kd=ft", "kd.ft.paraphraser_epochs=1"],  # the paraphraser trains first, with DDP
    "at_sp": [*LENET, "kd=[at,sp]"],  # feature taps on both models, two methods at once
    "online": [*FAKE, "scheme=online", "teacher=mlp800", "student=mlp800"],
    "online_peers": [*FAKE, "scheme=online", "scheme.peers=3", "student=mlp800"],
    "self": [*FAKE, "scheme=self", "scheme.generations=1", "student=mlp800"],
    "self_byot": [*LENET, "scheme=self_byot"],
    # Compared with one process by the test: no augmentation, dropout or batch norm.
    "fitnet_mlp": ["dataset=fake", "dataset.image_size=8", "dataset.shift=0", "dataset.num_train=576",
                   "dataset.val_split=64", "teacher=mlp800", "student=mlp800", "teacher.batch_size=128",
                   "student.batch_size=128", "teacher.epochs=1", "epochs=2", "kd=fitnet", "kd.fitnet.hint_epochs=1"],
    "ensemble": [*FAKE, "teacher=[mlp800,lenet5]", "student=mlp800",
                 *(f"teacher.members.{m}.epochs=1" for m in ("mlp800", "lenet5"))],
}


def main(out: Path) -> None:
    from kdrun.run import run

    for name, overrides in CASES.items():
        run(make_cfg(*overrides, "progress=false", tmp=out), out / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
