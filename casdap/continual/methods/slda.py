"""``slda``: Deep Streaming LDA (Hayes & Kanan) on the frozen backbone's pooled features: class means,
one shared covariance, shrinkage chosen on held-out training images (:mod:`casdap.continual.discriminants`);
no gradient (with ``BASELINES.FIRST_SESSION``, after the first task's adaptation of the backbone)."""

from casdap.continual.methods.base import FrozenFeatureMethod


class SLDA(FrozenFeatureMethod):
    name = "slda"

    def classifier(self, cfg):
        from casdap.continual.discriminants import SLDAClassifier

        return SLDAClassifier

    def make_classifier(self, cfg, cls, backbone, num_classes):
        from casdap.continual.discriminants import build_discriminant

        return build_discriminant(cfg, cls, backbone, num_classes)

    def strategy(self, cfg):
        from casdap.continual.discriminants import DiscriminantStrategy

        return DiscriminantStrategy, {"seed": 0 if cfg.SEED is None else int(cfg.SEED)}


METHOD = SLDA()
