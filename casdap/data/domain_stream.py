"""``embedded_domains``: an embedded class-incremental stream with a domain per task.

On ``embedded_shift`` every task shares one new look, so adapting the backbone on the first task
prepares it for all the others. Here each of the 5 tasks of 10 classes is its own source *and*
its own look, the shape of the 5-datasets and DomainNet benchmarks, with no download:

* task 0: scikit-learn's real handwritten digits (:mod:`casdap.data.digits`), as they ship:
  grey 8x8 block counts, upsampled; the look the glyph backbone was pretrained on;
* tasks 1-4: characters of four scripts that neither the glyph pretraining
  (``casdap.data.glyphs.GLYPH_SETS``) nor ``embedded_shift`` (``SHIFT_TASKS``) uses, drawn from
  matplotlib's fonts by ``embedded_shift``'s machinery (:func:`~casdap.data.glyph_stream.glyph_bank`,
  :func:`~casdap.data.glyph_stream.draw_glyphs`) and each finished in a look of its own: outlined
  strokes, dark ink on light paper, a photocopy, colour on texture.

The characters were picked with ``shape_similarity`` against every pretraining glyph, the digits
and the ``embedded_shift`` characters: each kept one scores at most 0.75 (docs/embedded_domains.md).
Images are a pure function of ``(seed, images per class, image size)``; training and test images
come from separate random streams (digits: separate images of the real set).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F

from casdap.data import glyph_stream
from casdap.data.glyphs import GLYPH_SETS, is_digit_like
from casdap.errors import CasdapError

__all__ = [
    "DOMAIN_TASKS",
    "LOOKS",
    "TEST_PER_CLASS",
    "TRAIN_PER_CLASS",
    "DomainTask",
    "describe_domain_stream",
    "domain_characters",
    "domain_class_names",
    "render_domain_stream",
]


class DomainTask(NamedTuple):
    """One task of the stream: its source, its 10 classes and the look its images are given."""

    source: str
    characters: str
    look: str


DOMAIN_TASKS: tuple[DomainTask, ...] = (
    DomainTask("digits", "0123456789", "handwriting"),
    DomainTask("canadian_syllabics", "ᔦᔪᓭᓴᖃᖑᖅᖏᖕᕙ", "outlined"),
    DomainTask("lao", "ກຂຄຊຕທຜລມສ", "inverted_ink"),
    DomainTask("braille", "⡓⡚⡪⢣⡕⣑⢛⣡⢞⣍", "photocopy"),
    DomainTask("arabic", "شئيمخفءظقص", "colour_on_texture"),
)
TRAIN_PER_CLASS = 80  # default training images per class (the digits have 174-183 per class in all)
TEST_PER_CLASS = 20  # default held-out images per class
_SPLIT_STREAMS = {"train": 1, "test": 2}


def domain_characters() -> list[str]:
    """The glyph tasks' 40 characters, in label order (the digits task is not a glyph set)."""
    return [c for t in DOMAIN_TASKS if t.source != "digits" for c in t.characters]


def domain_class_names() -> list[str]:
    """Readable class names: ``<source>:<character>`` (``digits:7``), in label order."""
    return [f"{t.source}:{c}" for t in DOMAIN_TASKS for c in t.characters]


def _check_character_set() -> None:
    chars = domain_characters()
    taken = set("".join(GLYPH_SETS.values())) | set(glyph_stream.shift_characters())
    bad = [c for c in chars if c in taken or is_digit_like(c)]
    if bad or len(set(chars)) != len(chars):
        raise CasdapError(f"embedded_domains characters overlap the pretraining or embedded_shift glyphs, are "
                          f"digit-like or repeat: {bad}")


def _uniform(n: int, g: torch.Generator, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _area(glyph: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(glyph, size=(size, size), mode="area").clamp_(0, 1)


def _grey(img: torch.Tensor) -> torch.Tensor:
    return img.clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()


def _outlined(glyph: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """Light outlines of emboldened strokes on a dark grey ground: the stroke's edge, not its ink."""
    n = glyph.shape[0]
    bold = F.max_pool2d(glyph, 5, 1, 2)
    edge = (bold + F.max_pool2d(-bold, 7, 1, 3)).clamp(0, 1)  # bold minus its erosion
    alpha = _area(edge, size)
    ground = _uniform(n, g, 0.0, 0.25)[:, None, None, None]
    ink = _uniform(n, g, 0.75, 1.0)[:, None, None, None]
    img = ground + (ink - ground) * alpha
    return _grey(img + torch.randn(img.shape, generator=g) * _uniform(n, g, 0.0, 0.03)[:, None, None, None])


def _inverted_ink(glyph: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """Dark ink on light, unevenly toned, slightly tinted paper (the pretraining's polarity reversed)."""
    n = glyph.shape[0]
    alpha = _area(glyph, size)
    paper = _uniform(n, g, 0.75, 1.0)[:, None, None, None] + 0.06 * glyph_stream.smooth_field(n, 1, size, 3, g)
    tint = torch.stack([torch.ones(n), _uniform(n, g, 0.93, 1.0), _uniform(n, g, 0.8, 1.0)], 1)
    paper = paper * tint[:, :, None, None]
    ink = _uniform(n, g, 0.0, 0.3)[:, None, None, None]
    img = paper * (1 - alpha) + ink * alpha
    return (img + torch.randn(img.shape, generator=g) * _uniform(n, g, 0.0, 0.03)[:, None, None, None]).clamp_(0, 1)


def _photocopy(glyph: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """A grey photocopy: spread and re-thresholded toner, uneven exposure, a streak on half the
    images, salt-and-pepper specks and pixel noise."""
    n = glyph.shape[0]
    alpha = glyph_stream.gaussian_blur(_area(glyph, size), _uniform(n, g, 0.6, 1.4) * size / 32)
    thr = _uniform(n, g, 0.25, 0.55)[:, None, None, None]
    toner = torch.sigmoid((alpha - thr) * _uniform(n, g, 6.0, 14.0)[:, None, None, None])
    light = _uniform(n, g, 0.8, 1.0)[:, None, None, None] + 0.12 * glyph_stream.smooth_field(n, 1, size, 2, g)
    dark = _uniform(n, g, 0.05, 0.3)[:, None, None, None]
    img = light * (1 - toner) + dark * toner
    xs = torch.arange(size, dtype=torch.float32)[None, :]
    col = _uniform(n, g, 0, size)[:, None]
    streak = torch.exp(-((xs - col) ** 2) / 2.0) * _uniform(n, g, 0.1, 0.3)[:, None]
    streak = streak * (torch.rand(n, 1, generator=g) < 0.5)
    img = img - streak[:, None, None, :]
    speck = torch.rand(img.shape, generator=g) < _uniform(n, g, 0.002, 0.015)[:, None, None, None]
    salt = (torch.rand(img.shape, generator=g) < 0.5).float()
    img = torch.where(speck, salt, img)
    return _grey(img + torch.randn(img.shape, generator=g) * _uniform(n, g, 0.02, 0.06)[:, None, None, None])


def _colour_on_texture(glyph: torch.Tensor, g: torch.Generator, size: int) -> torch.Tensor:
    """embedded_shift's look: a coloured glyph on a textured ground of another colour, clutter, blur, noise."""
    return glyph_stream.paint_colour_on_texture(_area(glyph, size), g)


# look -> painter(glyphs on the 64 px canvas [n, 1, 64, 64], generator, image size) -> [n, 3, S, S]
LOOKS = {
    "outlined": _outlined,
    "inverted_ink": _inverted_ink,
    "photocopy": _photocopy,
    "colour_on_texture": _colour_on_texture,
}


def _digits_split(seed: int, train_per_class: int, test_per_class: int, image_size: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint seeded draws of each digit's real images: ``test_per_class`` to test, then
    ``train_per_class`` to training."""
    from casdap.data.digits import load_digits_tensors

    x, y = load_digits_tensors(image_size)
    g = torch.Generator().manual_seed(int(seed) * 1_000_003)
    train, test = [], []
    for c in range(10):
        idx = torch.nonzero(y == c)[:, 0]
        if len(idx) < train_per_class + test_per_class:
            raise CasdapError(f"embedded_domains: digit {c} has {len(idx)} images, fewer than {train_per_class} "
                              f"training + {test_per_class} test images per class")
        perm = idx[torch.randperm(len(idx), generator=g)]
        test.append(perm[:test_per_class])
        train.append(perm[test_per_class : test_per_class + train_per_class])
    train_idx, test_idx = torch.cat(train), torch.cat(test)
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


@lru_cache(maxsize=4)
def render_domain_stream(seed: int = 0, train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS,
                         image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stream's images: ``(x_train, y_train, x_test, y_test)``, images ``[N, 3, S, S]`` in [0, 1],
    labels 0-49 (task ``t`` holds ``10t .. 10t + 9``), each class's images together.

    A pure function of its arguments (cached per process: treat the tensors as read-only). Each
    glyph task and split renders from its own random stream of ``seed``.
    """
    for name, value in (("training images per class", train_per_class), ("test images per class", test_per_class)):
        if not isinstance(value, int) or value < 1:
            raise CasdapError(f"embedded_domains: {name} must be a positive integer (got {value!r})")
    if not isinstance(image_size, int) or not 16 <= image_size <= glyph_stream.CANVAS:
        raise CasdapError(f"embedded_domains renders images of 16 to {glyph_stream.CANVAS} pixels, not DATA.CROPSIZE "
                          f"{image_size!r} (its glyphs are drawn on a 64 px canvas; the embedded backbone was "
                          "pretrained at 32)")
    _check_character_set()
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"train": [], "test": []}
    for t, task in enumerate(DOMAIN_TASKS):
        if task.source == "digits":
            x_tr, y_tr, x_te, y_te = _digits_split(seed, train_per_class, test_per_class, image_size)
            parts["train"].append((x_tr, y_tr + 10 * t))
            parts["test"].append((x_te, y_te + 10 * t))
            continue
        bank, bank_label, _ = glyph_stream.glyph_bank(tuple(task.characters), "embedded_domains")
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 10 * t + _SPLIT_STREAMS[split])
            labels = torch.arange(len(task.characters)).repeat_interleave(per_class)
            glyphs = glyph_stream.draw_glyphs(labels, g, bank, bank_label)
            parts[split].append((LOOKS[task.look](glyphs, g, image_size), labels + 10 * t))
    (x_tr, y_tr), (x_te, y_te) = ((torch.cat([p[0] for p in parts[s]]), torch.cat([p[1] for p in parts[s]]))
                                  for s in ("train", "test"))
    return x_tr, y_tr, x_te, y_te


def describe_domain_stream(train_per_class: int = TRAIN_PER_CLASS, test_per_class: int = TEST_PER_CLASS) -> dict:
    """What the stream is made of (for sidecars and docs)."""
    tasks = []
    for task in DOMAIN_TASKS:
        entry = {"source": task.source, "characters": task.characters, "look": task.look}
        if task.source != "digits":
            fonts = glyph_stream.glyph_bank(tuple(task.characters), "embedded_domains")[2]
            entry["fonts_per_class"] = {c: list(f) for c, f in zip(task.characters, fonts)}
        tasks.append(entry)
    return {"name": "embedded_domains", "tasks": tasks, "num_classes": 10 * len(DOMAIN_TASKS),
            "train_per_class": train_per_class, "test_per_class": test_per_class}
