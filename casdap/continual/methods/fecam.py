"""``fecam``: FeCAM (Goswami et al.) on the frozen backbone's pooled features: per-class shrunk,
normalised covariances and Mahalanobis scoring, shrinkage chosen on held-out training images
(:mod:`casdap.continual.discriminants`); no gradient (with ``BASELINES.FIRST_SESSION``, after the
first task's adaptation of the backbone)."""

from casdap.continual.methods.base import FrozenFeatureMethod


class FeCAM(FrozenFeatureMethod):
    name = "fecam"

    def classifier(self, cfg):
        from casdap.continual.discriminants import FeCAMClassifier

        return FeCAMClassifier

    def make_classifier(self, cfg, cls, backbone, num_classes):
        from casdap.continual.discriminants import build_discriminant

        return build_discriminant(cfg, cls, backbone, num_classes)

    def strategy(self, cfg):
        from casdap.continual.discriminants import DiscriminantStrategy

        return DiscriminantStrategy, {"seed": 0 if cfg.SEED is None else int(cfg.SEED)}


METHOD = FeCAM()
