"""``linear``: frozen backbone, a linear head trained with the logits of other tasks' classes masked
(DAP's masking, :class:`~casdap.continual.plugins.CurrentClassMaskPlugin`)."""

from casdap.continual.methods.base import Method, ResumableNaive


class Linear(Method):
    name = "linear"

    def build_model(self, cfg, num_classes):
        from casdap.models.build import build_backbone
        from casdap.models.classifiers import BackboneClassifier

        return BackboneClassifier(build_backbone(cfg, num_classes=0), num_classes, freeze_backbone=True)

    def param_groups(self, cfg, model):
        return [{"params": list(model.head.parameters()), "lr": cfg.SOLVER.BASE_LR}]

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        from casdap.continual.plugins import CurrentClassMaskPlugin

        return ResumableNaive(model=model, optimizer=optimizer, criterion=self.criterion(),
                              plugins=[CurrentClassMaskPlugin(), *plugins], **common)


METHOD = Linear()
