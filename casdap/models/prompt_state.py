"""What a prompt pool model's checkpoint must hold: the filter that maps the layout from before the
pools were sources, and one clear error when a checkpoint and a model differ in their parts.

A pool model's parts depend on its settings: the kept class statistics of the prompted features
(prediction ``all``), those of the query (a task predictor estimated from them) and the adapted
query. A checkpoint made without a part cannot be loaded into a model that has it (or the other
way round), and torch's own error would list dozens of raw key names instead of the setting.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from casdap.errors import CasdapError

__all__ = ["PARTS", "LayoutMismatch", "check_layout", "layout_difference", "move_into_source"]

SOURCE = "source."
# (what the part is, the setting that turns it on, the state-dict names that belong to it alone)
PARTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("class statistics of the prompted features", "MODEL.DAP.PREDICTION all",
     ("prompted_count", "prompted_sum", "prompted_outer", "prompted_scatter", "all_weight", "all_bias")),
    ("class statistics of the query", "MODEL.DAP.TASK_INFERENCE gaussian, lda or head",
     ("query_count", "query_sum", "query_outer", "query_scatter", "task_predictor.")),
    ("adapted query", "MODEL.DAP.QUERY adapted", ("adapted", "adapt_head.", "query_backbone.")),
)


class LayoutMismatch(CasdapError):
    """A checkpoint made with other parts than the model has; ``difference`` says which."""

    def __init__(self, difference: str) -> None:
        self.difference = difference
        super().__init__(f"{difference}: build the model with the checkpoint's own settings to load it")


def move_into_source(state_dict: dict, prefix: str, source_state: Mapping[str, object]) -> None:
    """The layout from before the pools were sources: the pool's own names (``keys``,
    ``prompts.0``, ...) at the model's top level move into the source slot (``source.keys``)."""
    for name in source_state:
        old, new = prefix + name, prefix + SOURCE + name
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)


def _in_part(name: str, names: tuple[str, ...]) -> bool:
    return any(name == n or (n.endswith(".") and name.startswith(n)) for n in names)


def layout_difference(given: Iterable[str], expected: Iterable[str]) -> str | None:
    """What a state dict's keys ``given`` lack or hold beyond ``expected``, in parts and settings;
    None when every part matches."""
    given, expected = set(given), set(expected)
    lacks, holds = [], []
    for what, setting, names in PARTS:
        has, wants = any(_in_part(k, names) for k in given), any(_in_part(k, names) for k in expected)
        if wants and not has:
            lacks.append(f"{what} ({setting})")
        elif has and not wants:
            holds.append(f"{what} ({setting})")
    if not lacks and not holds:
        return None
    said = []
    if lacks:
        said.append(f"lacks the {' and the '.join(lacks)} that the model's settings turn on")
    if holds:
        said.append(f"holds the {' and the '.join(holds)} that the model's settings turn off")
    return "the checkpoint was made with other settings: it " + "; it ".join(said)


def check_layout(state_dict: Mapping[str, object], prefix: str, expected: Iterable[str]) -> None:
    """Raise :class:`LayoutMismatch` when the model's part of ``state_dict`` (keys under ``prefix``)
    differs from ``expected`` (the model's own state-dict names) in a part of :data:`PARTS`."""
    given = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    difference = layout_difference(given, expected)
    if difference is not None:
        raise LayoutMismatch(difference)
