"""``ranpac``: random projection, ReLU and a ridge classifier over accumulated statistics of the
frozen backbone's features (:mod:`casdap.continual.prototypes`); no gradient (with
``BASELINES.FIRST_SESSION``, after the first task's adaptation of the backbone)."""

from casdap.continual.methods.base import FrozenFeatureMethod


class RanPAC(FrozenFeatureMethod):
    name = "ranpac"

    def classifier(self, cfg):
        from casdap.continual.prototypes import RanPACClassifier

        return RanPACClassifier

    def make_classifier(self, cfg, cls, backbone, num_classes):
        from casdap.continual.prototypes import build_ranpac

        return build_ranpac(cfg, backbone, num_classes, cls)

    def strategy(self, cfg):
        from casdap.continual.prototypes import RanPACStrategy

        return RanPACStrategy, {"seed": 0 if cfg.SEED is None else int(cfg.SEED)}


METHOD = RanPAC()
