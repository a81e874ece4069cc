"""``finetune``: sequential fine-tuning of the backbone and one linear head (the lower bound)."""

from casdap.continual.methods.base import Method, ResumableNaive


class Finetune(Method):
    name = "finetune"

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        return ResumableNaive(model=model, optimizer=optimizer, criterion=self.criterion(), plugins=plugins, **common)


METHOD = Finetune()
