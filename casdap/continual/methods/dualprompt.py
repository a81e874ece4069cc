"""``dualprompt``: DualPrompt (Wang et al., ECCV 2022) on the frozen CAS-ViT: shared G-prompts in the
first ``MODEL.PROMPT.G_BLOCKS`` prompted blocks, one E-prompt per task (with a key) in the others
(:class:`casdap.models.prompt_pools.DualPromptPrompts`, :class:`casdap.continual.prompt_methods.DualPromptStrategy`)."""

from casdap.continual.prompt_methods import DualPromptStrategy, PromptMethod


class DualPrompt(PromptMethod):
    name = "dualprompt"
    model_class = "DualPromptPrompts"
    loss_weights = ("PULL_LAMBDA",)
    strategy_class = DualPromptStrategy
    has_task = True

    def model_options(self, cfg):
        p = cfg.MODEL.PROMPT
        return {"length": int(p.LENGTH), "g_length": int(p.G_LENGTH), "g_blocks": int(p.G_BLOCKS)}


METHOD = DualPrompt()
