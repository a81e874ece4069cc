"""``ncm``: nearest class mean of the frozen backbone's normalised features (SimpleCIL); no gradient."""

from casdap.continual.methods.base import Method


class NCM(Method):
    name = "ncm"
    gradient_training = False
    uses_optimizer = False

    def build_model(self, cfg, num_classes):
        from casdap.continual.strategies import NCMClassifier
        from casdap.models.build import build_backbone

        return NCMClassifier(build_backbone(cfg, num_classes=0), num_classes)

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        from casdap.continual.strategies import NCMStrategy

        return NCMStrategy(model=model, plugins=plugins, **common)


METHOD = NCM()
