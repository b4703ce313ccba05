"""The published CIFAR-100 numbers that `make reproduce-cifar100` stands kdrun's next to: top-1 test
accuracy (%), each the best test epoch of 240, one run per cell as the tables give them.

- RepDistiller: HobbitLong/RepDistiller, README.md, "Benchmark Results on CIFAR-100", tables 1
  (same architecture) and 2 (different architectures); the numbers of Tian et al., "Contrastive
  Representation Distillation", ICLR 2020, Tables 1 and 2. Its "Teacher" and "Student" rows are the
  teachers it publishes and its students trained from labels alone (kdrun's kd=none).
- mdistiller: megvii-research/mdistiller, README.md, "Decoupled Knowledge Distillation", CIFAR-100
  tables (Zhao et al., CVPR 2022, Tables 1 and 2). Its second table labels its last column
  "ResNet32x4 / MobileNet-V2"; its KD number there (74.45) is RepDistiller's ResNet32x4 ->
  ShuffleNetV2 and the paper's Table 2 column is ShuffleNet-V2, so it is filed under that pair.

Keys: the pair options of configs/pair/ and kdrun's method names (none, hinton, ...). A missing cell
was not published.
"""
from __future__ import annotations

PAIRS = ["wrn_40_2-wrn_16_2", "wrn_40_2-wrn_40_1", "resnet56-resnet20", "resnet110-resnet20", "resnet110-resnet32",
         "resnet32x4-resnet8x4", "vgg13-vgg8", "vgg13-mobilenetv2", "resnet50-mobilenetv2", "resnet50-vgg8",
         "resnet32x4-shufflev1", "resnet32x4-shufflev2", "wrn_40_2-shufflev1"]


def _rows(table: str) -> dict:
    """A table written as in the README: a header of pairs, then `row: values` in that order."""
    lines = [line.split() for line in table.strip().splitlines()]
    pairs = lines[0]
    return {row[0].rstrip(":"): {p: float(v) for p, v in zip(pairs, row[1:]) if v != "-"} for row in lines[1:]}


REPDISTILLER = _rows("""
         wrn_40_2-wrn_16_2 wrn_40_2-wrn_40_1 resnet56-resnet20 resnet110-resnet20 resnet110-resnet32 resnet32x4-resnet8x4 vgg13-vgg8 vgg13-mobilenetv2 resnet50-mobilenetv2 resnet50-vgg8 resnet32x4-shufflev1 resnet32x4-shufflev2 wrn_40_2-shufflev1
teacher:  75.61 75.61 72.34 74.31 74.31 79.42 74.64 74.64 79.34 79.34 79.42 79.42 75.61
none:     73.26 71.98 69.06 69.06 71.14 72.50 70.36 64.60 64.60 70.36 70.50 71.82 70.50
hinton:   74.92 73.54 70.66 70.67 73.08 73.33 72.98 67.37 67.35 73.81 74.07 74.45 74.83
fitnet:   73.58 72.24 69.21 68.99 71.06 73.50 71.02 64.14 63.16 70.69 73.59 73.54 73.73
at:       74.08 72.77 70.55 70.22 72.31 73.44 71.43 59.40 58.58 71.84 71.73 72.73 73.32
sp:       73.83 72.43 69.67 70.04 72.69 72.94 72.68 66.30 68.08 73.34 73.48 74.56 74.52
cc:       73.56 72.21 69.63 69.48 71.48 72.97 70.71 64.86 65.43 70.25 71.14 71.29 71.38
vid:      74.11 73.30 70.38 70.16 72.61 73.09 71.23 65.56 67.57 70.30 73.38 73.40 73.61
rkd:      73.35 72.22 69.61 69.25 71.82 71.90 71.48 64.52 64.43 71.50 72.28 73.21 72.21
pkt:      74.54 73.45 70.34 70.25 72.61 73.64 72.88 67.13 66.52 73.01 74.10 74.69 73.89
ab:       72.50 72.38 69.47 69.53 70.98 73.17 70.94 66.06 67.20 70.65 73.55 74.31 73.34
ft:       73.25 71.59 69.84 70.22 72.37 72.86 70.58 61.78 60.99 70.29 71.75 72.50 72.03
fsp:      72.91 -     69.95 70.11 71.89 72.62 70.23 -     -     -     -     -     -
nst:      73.68 72.24 69.60 69.53 71.96 73.30 71.53 58.16 64.96 71.28 74.12 74.68 74.89
crd:      75.48 74.14 71.16 71.46 73.48 75.51 73.94 69.73 69.11 74.30 75.11 75.65 76.05
""")

MDISTILLER = _rows("""
         wrn_40_2-wrn_16_2 wrn_40_2-wrn_40_1 resnet56-resnet20 resnet110-resnet20 resnet110-resnet32 resnet32x4-resnet8x4 vgg13-vgg8 vgg13-mobilenetv2 resnet50-mobilenetv2 resnet50-vgg8 resnet32x4-shufflev1 resnet32x4-shufflev2 wrn_40_2-shufflev1
hinton:   74.92 73.54 70.66 -     73.08 73.33 72.98 67.37 67.35 -     74.07 74.45 74.83
dkd:      76.23 74.81 71.97 -     74.11 76.32 74.68 69.71 70.35 -     76.45 77.07 76.70
""")


def published(method: str, pair: str) -> tuple[float | None, str | None]:
    """The number to compare with and whose it is: RepDistiller's where it has one, else mdistiller's."""
    for source, table in (("RepDistiller", REPDISTILLER), ("mdistiller", MDISTILLER)):
        if pair in table.get(method, {}):
            return table[method][pair], source
    return None, None
