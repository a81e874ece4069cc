"""``ranpac``: random projection, ReLU and a ridge classifier over accumulated statistics of the
frozen backbone's features (:mod:`casdap.continual.prototypes`); no gradient."""

from casdap.continual.methods.base import Method


class RanPAC(Method):
    name = "ranpac"
    gradient_training = False
    uses_optimizer = False

    def build_model(self, cfg, num_classes):
        from casdap.continual.prototypes import build_ranpac
        from casdap.models.build import build_backbone

        return build_ranpac(cfg, build_backbone(cfg, num_classes=0), num_classes)

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        from casdap.continual.prototypes import RanPACStrategy

        return RanPACStrategy(model=model, plugins=plugins, seed=0 if cfg.SEED is None else int(cfg.SEED), **common)


METHOD = RanPAC()
