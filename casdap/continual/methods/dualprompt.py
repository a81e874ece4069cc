"""``dualprompt``: DualPrompt (Wang et al., ECCV 2022) on the frozen CAS-ViT: shared G-prompts in the
first ``MODEL.PROMPT.G_BLOCKS`` prompted blocks, one E-prompt per task (with a key) in the others
(the prompt source :class:`casdap.models.prompt_sources.dualprompt.DualPromptPool`,
:class:`casdap.continual.prompt_methods.DualPromptStrategy`)."""

from casdap.continual.prompt_methods import DualPromptStrategy, PromptMethod


class DualPrompt(PromptMethod):
    name = "dualprompt"
    loss_weights = ("PULL_LAMBDA",)
    strategy_class = DualPromptStrategy
    has_task = True

    def model_options(self, cfg):
        p = cfg.MODEL.PROMPT
        options = {"length": int(p.LENGTH), "g_length": int(p.G_LENGTH), "g_blocks": int(p.G_BLOCKS)}
        inference = str(cfg.MODEL.DAP.TASK_INFERENCE).strip().lower()
        if inference != "keys":  # a task predictor estimated from class statistics of the query
            options.update(task_predictor=inference, shrinkage=float(cfg.MODEL.DAP.SHRINKAGE))
        return options

    def protocol_notes(self, cfg):
        notes = super().protocol_notes(cfg)
        inference = str(cfg.MODEL.DAP.TASK_INFERENCE).strip().lower()
        if inference != "keys":
            notes.append(f"Task inference: {inference} (class statistics of the query, shrinkage "
                         f"{cfg.MODEL.DAP.SHRINKAGE})")
        return notes


METHOD = DualPrompt()
