"""``aper``: a backbone copy adapted on the first task, then prototypes of the pretrained and adapted
features (:mod:`casdap.continual.prototypes`). The first task trains the copy and a head (the
backbone at ``BASELINES.BACKBONE_LR_SCALE`` of the rate); later tasks take no gradient step."""

from casdap.continual.methods.base import Method


class APER(Method):
    name = "aper"

    def build_model(self, cfg, num_classes):
        from casdap.continual.prototypes import APERClassifier
        from casdap.models.build import build_backbone

        # model.backbone: the copy adapted on the first task (model.pretrained stays)
        return APERClassifier(build_backbone(cfg, num_classes=0), num_classes)

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        from casdap.continual.prototypes import APERStrategy

        return APERStrategy(model=model, optimizer=optimizer, plugins=plugins, **common)


METHOD = APER()
