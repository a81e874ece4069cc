"""How prompt tokens enter the frozen CAS-ViT: :class:`PromptInjection` (zero-initialised gates, the
tokens' normalisation and the hand-over to a block's own mixer) and :class:`PromptedBlock` (an
injection with its prompt source, one per prompted block of CAS-DAP). The learned-prompt models
(:mod:`casdap.models.prompt_pools`) use the injection alone."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from casdap import dap_defaults as D
from casdap.dap_registry import INJECTION_NAMES, PROMPT_SOURCES, checked, load
from casdap.errors import CasdapError
from casdap.models.casvit import AdditiveBlock, MixerPrompts
from casdap.models.prompt_sources import PromptSource
from casdap.models.prompt_sources.groups import TaskGroups

__all__ = ["INJECTIONS", "PromptInjection", "PromptedBlock", "build_checked"]

INJECTIONS = INJECTION_NAMES


def build_checked(kind: str, cls: type, args: tuple, options: Mapping[str, Any]) -> Any:
    """``cls(*args, **options)``; an option the class does not take is one clear error, never ignored."""
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in options if k not in params)
        if unknown:
            raise CasdapError(f"{kind} {cls.__name__} does not take {', '.join(unknown)}")
    return cls(*args, **options)


class PromptInjection(nn.Module):
    """How prompt tokens enter one :class:`AdditiveBlock` of the frozen backbone: the injection's
    zero-initialised per-channel gates, the normalisation of the tokens and the hand-over to the
    block's mixer (:class:`~casdap.models.casvit.MixerPrompts`). :class:`PromptedBlock` adds DAP's
    prompt source; the learned-prompt methods (:mod:`casdap.models.prompt_pools`) give their own
    tokens to :meth:`forward_tokens`. Injections are described in :class:`PromptedBlock`.
    """

    def __init__(self, dim: int, injection: str = D.INJECTION) -> None:
        super().__init__()
        self.injection = checked("injection", injection, INJECTIONS)
        self._add_gates(dim)

    def _add_gates(self, dim: int) -> None:
        # kv: keys; pool: query context; attn reads prompts through one gate only
        self.gate_a = nn.Parameter(torch.zeros(dim, 1, 1)) if self.injection != "attn" else None
        self.gate_b = nn.Parameter(torch.zeros(dim, 1, 1))  # kv, attn: values; pool: key context

    def mixer_prompts(self, tokens: torch.Tensor) -> MixerPrompts:
        """Normalised prompt tokens ``[B, N, C]`` in the roles of this block's injection."""
        if self.injection == "kv":
            return MixerPrompts(tokens, key_gate=self.gate_a, value_gate=self.gate_b)
        if self.injection == "attn":
            return MixerPrompts(tokens, read_gate=self.gate_b)
        return MixerPrompts(tokens, q_context_gate=self.gate_a, k_context_gate=self.gate_b)

    @staticmethod
    def normalize_prompts(norm: nn.BatchNorm2d, prompts: torch.Tensor) -> torch.Tensor:
        """Prompt tokens ``[B, C, N]`` -> normalised tokens ``[B, N, C]`` for the block's mixer.

        In DAP the FiLM output (unit-norm gamma and beta, so tiny per element) is inserted before
        the block's LayerNorm, which brings each prompt to the scale of the other tokens. CAS-ViT's
        norm is a BatchNorm with fixed statistics that would leave the prompts tiny, so each prompt
        is standardised over channels here and then given the frozen norm's affine (weight, bias),
        the same ``LN(p) * w + b`` a ViT block applies to its prompts.
        """
        tokens = F.layer_norm(prompts.transpose(1, 2), prompts.shape[1:2], eps=1e-6)  # [B, N, C]
        return tokens * norm.weight + norm.bias

    def forward_tokens(self, block: AdditiveBlock, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``block``'s output with given raw prompt tokens ``[B, N, C]`` (the same for every position)
        normalised and injected into its mixer."""
        mixer = self.mixer_prompts(self.normalize_prompts(block.norm1, tokens.transpose(1, 2)))
        return block(x, prompts=lambda h: mixer)

    def gates(self) -> list[nn.Parameter]:
        return [g for g in (self.gate_a, self.gate_b) if g is not None]


class PromptedBlock(PromptInjection):
    """Prompt source and injection for one :class:`AdditiveBlock` of the frozen backbone.

    The backbone block is passed to :meth:`forward` rather than held, so its weights stay owned
    (and saved) by the backbone alone, and the block runs its own forward: this module only hands
    it the prompts (:class:`~casdap.models.casvit.MixerPrompts`). The prompts are generated from the
    stream that enters the mixer's residual branch (after local integration), like DAP's prompts
    are generated from the tokens that enter attention. Each prompt is normalised like a ViT token
    (see :meth:`normalize_prompts`) and projected by the block's frozen ``qkv`` as a one-pixel map
    with no neighbours. Injections (``gate_*`` are zero-initialised per-channel gates):

    - ``kv`` (default): prompts act as extra keys and values. The prompt keys, processed by the
      block's own key operator as one-pixel maps, shift the additive attention map; the prompt
      values are added to every position's value, so each position reads them in proportion to
      its own attention map: ``proj(dwc(q' + k' + gk * mean k'_p) * (v + gv * mean v_p))``.
    - ``attn``: prompts are extra keys and values read through a softmax over the image's prompt
      tokens, as a ViT position reads DAP's prepended prompts: each position's query scores every
      prompt key, and the weighted sum of prompt values is added, gated, to the mixer's output,
      ``proj(dwc(q' + k') * v + gv * softmax_n(q . k_n / sqrt(C)) v_n)``. Every token counts
      (``kv`` and ``pool`` average them first).
    - ``pool``: prompts join the global context of the channel operator ``C`` of q and k (the
      mixer's only global interaction): the pooled context becomes
      ``ctx + g * (mean S(q_p) - ctx)``, i.e. a learned share ``g`` of the context comes from
      the prompt tokens instead of the image positions.
    """

    def __init__(
        self, dim: int, num_tokens: int, task_emb_dim: int, injection: str = D.INJECTION,
        channel_mix: bool = D.CHANNEL_MIX, task_maps: int = 0, source: str = D.PROMPT_SOURCE,
        num_tasks: int | None = None,
    ) -> None:
        nn.Module.__init__(self)  # the source is registered before the gates (parameter order as before)
        self.injection = checked("injection", injection, INJECTIONS)
        options: dict[str, Any] = {}
        if channel_mix:
            options["channel_mix"] = True
        if task_maps > 0:
            options["task_maps"] = int(task_maps)
        source_cls = load("prompt_source", PROMPT_SOURCES, source)
        if num_tasks is not None and "num_tasks" in inspect.signature(source_cls).parameters:
            options["num_tasks"] = int(num_tasks)  # sources with per-task parameters
        self.generator: PromptSource = build_checked("prompt source", source_cls, (dim, num_tokens, task_emb_dim),
                                                     options)
        self._add_gates(dim)

    def forward(self, block: AdditiveBlock, x: torch.Tensor, task_emb: torch.Tensor,
                task_idx: int | torch.Tensor | TaskGroups | None = None) -> torch.Tensor:
        """``block``'s output with this block's prompts (from ``task_emb``, ``task_idx``: see
        :class:`~casdap.models.prompt_sources.PromptSource`) in its mixer."""

        def prompts(h: torch.Tensor) -> MixerPrompts:
            tokens = self.generator(h, task_emb, task_idx)  # [B, C, N]
            return self.mixer_prompts(self.normalize_prompts(block.norm1, tokens))

        return block(x, prompts=prompts)

    def structure_parameters(self) -> list[nn.Parameter]:
        """Task-agnostic parameters trained on the first task only: the source's (DAP: the shared
        token-axis and channel maps, none with per-task maps) and the gates."""
        gates = [g for g in (self.gate_a, self.gate_b) if g is not None]
        return [*self.generator.structure_parameters(), *gates]
