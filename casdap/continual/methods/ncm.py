"""``ncm``: nearest class mean of the frozen backbone's normalised features (SimpleCIL); no gradient
(with ``BASELINES.FIRST_SESSION``, after the first task's adaptation of the backbone)."""

from casdap.continual.methods.base import FrozenFeatureMethod


class NCM(FrozenFeatureMethod):
    name = "ncm"

    def classifier(self, cfg):
        from casdap.models.classifiers import NCMClassifier

        return NCMClassifier

    def strategy(self, cfg):
        from casdap.continual.gradient_free import NCMStrategy

        return NCMStrategy, {}


METHOD = NCM()
