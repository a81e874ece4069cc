"""ImageNet-R's class order in DAP: ``IMAGENET_R_IDS[k]`` is the ImageNet-1k class id (0-999, as
tensorflow-datasets labels ImageNet-R) whose images get label ``k``.

DAP (naver-ai/dap-cl) maps ImageNet-R's 200 ImageNet ids to 0-199 in a fixed shuffled order, and its
tasks take labels in natural order, so this table fixes which classes each of its 10 tasks holds.
The same facts, written the other way round: the position is the label.
"""

from __future__ import annotations

__all__ = ["IMAGENET_R_IDS", "imagenet_r_label_of"]

IMAGENET_R_IDS: tuple[int, ...] = (
    195, 315, 937, 147,   4, 428, 413,  79, 100, 162,  # labels 0-9
    895,  13, 963, 447, 448, 558, 231, 242, 414,  96,  # labels 10-19
    980, 355, 148, 199, 824,  97, 965, 833, 948,  31,  # labels 20-29
    288, 372, 763, 430, 130, 125, 953, 928, 160,  71,  # labels 30-39
    344, 107, 309, 291, 388, 234,  22, 105, 314, 122,  # labels 40-49
    265, 267, 340,   2,   8, 889, 932, 815, 866, 259,  # labels 50-59
    151, 587, 163, 805, 276, 407, 933, 113, 301, 132,  # labels 60-69
    441, 515, 178, 219, 296,   9, 774, 187, 251,  11,  # labels 70-79
    334, 487, 657, 934,  47, 330, 263, 981, 945, 847,  # labels 80-89
    171, 609, 717, 629, 208, 812, 852, 347,  39, 437,  # labels 90-99
    353, 245, 367, 144,  63, 637, 613, 277, 335, 172,  # labels 100-109
    308, 281, 779, 983, 292, 776, 338, 701, 471, 150,  # labels 110-119
    254, 323, 207,  84, 931, 472,  29, 583, 593, 293,  # labels 120-129
    327, 368, 319, 988, 299, 425, 470, 907, 936,  90,  # labels 130-139
    546, 435, 155, 247, 658,  23, 203, 621, 462, 457,  # labels 140-149
    310, 949, 361, 161, 232,   6, 289, 362, 570, 483,  # labels 150-159
    724, 311,   1, 397,  99, 260, 365,  76, 341, 957,  # labels 160-169
    250, 943, 951, 579, 393, 469, 235, 820, 476, 555,  # labels 170-179
    366, 967, 954, 337, 787, 617,  26, 145, 947, 780,  # labels 180-189
    883, 594,  94, 596, 875, 269, 401, 768, 463, 390,  # labels 190-199
)


def imagenet_r_label_of() -> dict[int, int]:
    """ImageNet id -> DAP's ImageNet-R label."""
    return {imagenet_id: label for label, imagenet_id in enumerate(IMAGENET_R_IDS)}
