"""``coda_prompt``: CODA-Prompt (Smith et al., CVPR 2023) on the frozen CAS-ViT: each image's prompt is
an attention-weighted sum of ``MODEL.PROMPT.COMPONENTS`` components split evenly over the tasks
(the prompt source :class:`casdap.models.prompt_sources.coda_prompt.CODAPool`,
:class:`casdap.continual.prompt_methods.CODAPromptStrategy`)."""

from casdap.continual.prompt_methods import CODAPromptStrategy, PromptMethod


class CODAPrompt(PromptMethod):
    name = "coda_prompt"
    loss_weights = ("ORTHO_LAMBDA",)
    strategy_class = CODAPromptStrategy

    def model_options(self, cfg):
        p = cfg.MODEL.PROMPT
        return {"components": int(p.COMPONENTS), "length": int(p.LENGTH)}


METHOD = CODAPrompt()
