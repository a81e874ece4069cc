"""``dap``: domain-adaptive prompts on the frozen CAS-ViT (:class:`casdap.continual.dap_strategy.DAPStrategy`),
optionally with a class-balanced replay buffer (``MODEL.DAP.REPLAY_MEM_SIZE``)."""

from casdap.continual.methods.base import Method, adapted_query_notes, fusion_notes, fusion_weight


class DAP(Method):
    name = "dap"

    def build_model(self, cfg, num_classes):
        from casdap.models.build import build_dap_model

        return build_dap_model(cfg)

    def param_groups(self, cfg, model):
        lr = cfg.SOLVER.BASE_LR
        groups = [{"params": [p for p in model.trainable_parameters() if p.requires_grad], "lr": lr}]
        backbone, head = model.adaptation_parameters()  # an adapted query: aper's first-session groups
        if backbone:
            groups += [{"params": backbone, "lr": lr * cfg.BASELINES.BACKBONE_LR_SCALE}, {"params": head, "lr": lr}]
        return groups

    def build_strategy(self, cfg, model, optimizer, plugins, **common):
        from casdap.continual.dap_strategy import DAPStrategy

        d = cfg.MODEL.DAP  # settings checked by casdap.continual.methods.checks.check_dap
        if d.REPLAY_MEM_SIZE > 0:  # replayed samples are trained under their own task's key and classes
            from casdap.continual.methods.replay import replay_plugins

            plugins = [*replay_plugins(int(d.REPLAY_MEM_SIZE)), *plugins]
        return DAPStrategy(model=model, optimizer=optimizer, plugins=plugins, current_lambda=d.CURRENT_LAMBDA,
                           sim_lambda=d.SIM_LAMBDA, selection=d.SELECTION.lower(),
                           restrict_to_task=d.RESTRICT_TO_TASK, prediction=d.PREDICTION, top_k=int(d.TOP_K),
                           fusion_weight=fusion_weight(cfg), **common)

    def protocol_notes(self, cfg):
        notes = []
        selection = cfg.MODEL.DAP.SELECTION.lower()
        if selection != "per_image":
            notes.append(f"Key selection: {selection}" + (
                " (reference protocol: each test batch holds one task and votes on its key)"
                if selection == "batch_majority" else " (oracle task identity: a diagnostic, not a result)"))
        source = cfg.MODEL.DAP.PROMPT_SOURCE.lower()
        if source != "dap":
            notes.append(f"Prompt source: {source}" + {
                "static": " (learned tokens per task, no instance-level generation)",
                "none": " (no prompt: the backbone's own features)"}.get(source, ""))
        if cfg.MODEL.DAP.RESTRICT_TO_TASK:
            notes.append("Logits restricted to the selected key's task classes")
        inference = cfg.MODEL.DAP.TASK_INFERENCE.lower()
        if inference != "keys":
            notes.append(f"Task inference: {inference} (class statistics of the query, shrinkage "
                         f"{cfg.MODEL.DAP.SHRINKAGE})")
        notes += adapted_query_notes(cfg)
        prediction = (cfg.MODEL.DAP.PREDICTION or "").lower()
        if prediction == "all":
            notes.append("Prediction over every seen class (head re-aligned on prompted-feature statistics)")
        elif prediction == "soft":
            notes.append(f"Prediction: top-{cfg.MODEL.DAP.TOP_K} tasks' prompts, p(task) p(class | task)")
        notes += fusion_notes(cfg)
        return notes

    def run_fields(self, cfg):
        fields = {"selection": cfg.MODEL.DAP.SELECTION.lower()}
        if cfg.MODEL.DAP.PROMPT_SOURCE.lower() != "dap":
            fields["prompt_source"] = cfg.MODEL.DAP.PROMPT_SOURCE.lower()
        if cfg.MODEL.DAP.TASK_INFERENCE.lower() != "keys":
            fields["task_inference"] = cfg.MODEL.DAP.TASK_INFERENCE.lower()
        if cfg.MODEL.DAP.PREDICTION:
            fields["prediction"] = cfg.MODEL.DAP.PREDICTION.lower()
        if cfg.MODEL.DAP.QUERY.lower() != "frozen":
            fields["query"] = cfg.MODEL.DAP.QUERY.lower()
            fields["prompt_backbone"] = cfg.MODEL.DAP.PROMPT_BACKBONE.lower()
        if fusion_weight(cfg) is not None:
            fields["fusion_weight"] = fusion_weight(cfg)
        return fields

    def eval_metrics(self):
        from casdap.continual.task_selection import TaskSelectionAccuracy

        return [TaskSelectionAccuracy()]

    def trainable_params(self, model):
        return sum(p.numel() for p in model.trainable_parameters())


METHOD = DAP()
