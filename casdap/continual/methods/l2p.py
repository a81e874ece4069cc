"""``l2p``: Learning to Prompt (Wang et al., CVPR 2022) on the frozen CAS-ViT: a shared pool of
``MODEL.PROMPT.POOL_SIZE`` prompts with keys, each image's ``TOP_N`` nearest by cosine to its query
(the prompt source :class:`casdap.models.prompt_sources.l2p.L2PPool`,
:class:`casdap.continual.prompt_methods.L2PStrategy`)."""

from casdap.continual.prompt_methods import L2PStrategy, PromptMethod


class L2P(PromptMethod):
    name = "l2p"
    loss_weights = ("PULL_LAMBDA",)
    strategy_class = L2PStrategy

    def model_options(self, cfg):
        p = cfg.MODEL.PROMPT
        return {"pool_size": int(p.POOL_SIZE), "top_n": int(p.TOP_N), "length": int(p.LENGTH)}


METHOD = L2P()
