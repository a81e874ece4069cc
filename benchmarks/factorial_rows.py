"""The rows of the factorial table (benchmarks/factorial.py) and the search space declared with each.

A row is one method under one pipeline: a config file of the stream (``{stream}`` is filled in),
``KEY VALUE`` overrides, and the settings its validation search may move. A search space maps a
key to ``(low, high)`` (a log-uniform float) or to a list of choices (``"auto"`` where the method
chooses the value itself on held-out training images). The first trial of every row is its shipped
setting, so the search can only match or beat what the configs ship on validation.

Pipelines of the prompt sources:

- ``published``: each method as its paper runs it, as the reference rows of the tables were run:
  a frozen query, its own key matching (DAP: 16 keys a task, logits restricted to the selected
  task; DualPrompt: the nearest E-prompt key; L2P, CODA-Prompt: no task) and its trained head,
  masked to the classes seen so far (docs/prompt_methods.md, configs/dap/<method>_<stream>.yaml);
- ``shared``: CAS-DAP's pipeline (configs/dap/embedded_shift.yaml): the query from the backbone
  adapted on the first task, which the prompts run on too; the task inferred from the query's class
  Gaussians where the source has a task variable (dap, static, none, dualprompt); prediction over
  every seen class by a linear discriminant of the prompted features' class statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ROWS", "Row", "row_names"]

LR = {"SOLVER.BASE_LR": (1e-3, 1e-1)}  # every trained row: the rate (also the first session's, scaled)
SHRINK = {"MODEL.DAP.SHRINKAGE": (1e-4, 1.0)}  # the shared pipeline's class Gaussians and LDA head

# DAP's reference pipeline (16 keys a task on the frozen query, logits restricted to its task)
DAP_PUBLISHED = ("MODEL.DAP.QUERY frozen MODEL.DAP.PROMPT_BACKBONE pretrained MODEL.DAP.TASK_INFERENCE keys "
                 "MODEL.DAP.KEYS_PER_TASK 16 MODEL.DAP.PREDICTION None MODEL.DAP.RESTRICT_TO_TASK True")
# CAS-DAP's shared pipeline; TASK_INFERENCE only where the source has a task variable
SHARED = ("MODEL.DAP.QUERY adapted MODEL.DAP.PROMPT_BACKBONE adapted MODEL.DAP.PREDICTION all "
          "MODEL.DAP.ALL_CLASS_HEAD lda")
SHARED_TASK = f"{SHARED} MODEL.DAP.TASK_INFERENCE gaussian MODEL.DAP.KEYS_PER_TASK 1 MODEL.DAP.RESTRICT_TO_TASK False"
# static is DAP without the instance-level generator (per-task tokens FiLM-modulated by the task
# embedding); none has no prompt: the generator's options off for both
STATIC = "MODEL.DAP.PROMPT_SOURCE static MODEL.DAP.CHANNEL_MIX False MODEL.DAP.TASK_GENERATORS False"
NONE = "MODEL.DAP.PROMPT_SOURCE none MODEL.DAP.CHANNEL_MIX False MODEL.DAP.TASK_GENERATORS False"


@dataclass(frozen=True)
class Row:
    name: str  # the folder of its runs (OUT/runs/<name>/seed<k>): what `casdap compare --reference` names
    config: str  # configs/dap/...yaml, {stream} filled in
    opts: str  # KEY VALUE overrides
    space: dict = field(default_factory=dict)
    pipeline: str = ""  # published | shared: the row's `none` of the same pipeline is its reference
    query_alone: bool = False  # scored as the query's class Gaussians alone (factorial.py, score_query)

    def config_file(self, stream: str) -> str:
        return self.config.format(stream=stream)


DAP = "configs/dap/{stream}.yaml"
STREAM = "configs/streams/{stream}.yaml"  # the stream alone: the baselines read none of DAP's keys
ROWS: list[Row] = [
    # prompt sources under their own published pipeline
    Row("published-none", DAP, f"{NONE} {DAP_PUBLISHED}", {**LR, "MODEL.DAP.SIM_LAMBDA": (0.01, 1.0)}, "published"),
    Row("published-static", DAP, f"{STATIC} {DAP_PUBLISHED}", {**LR, "MODEL.DAP.SIM_LAMBDA": (0.01, 1.0)}, "published"),
    Row("published-dap", DAP, DAP_PUBLISHED, {**LR, "MODEL.DAP.SIM_LAMBDA": (0.01, 1.0)}, "published"),
    Row("published-l2p", "configs/dap/l2p_{stream}.yaml", "", {**LR, "MODEL.PROMPT.PULL_LAMBDA": (0.01, 1.0)},
        "published"),
    Row("published-dualprompt", "configs/dap/dualprompt_{stream}.yaml", "",
        {**LR, "MODEL.PROMPT.PULL_LAMBDA": (0.1, 10.0)}, "published"),
    Row("published-coda_prompt", "configs/dap/coda_prompt_{stream}.yaml", "",
        {**LR, "MODEL.PROMPT.ORTHO_LAMBDA": (1e-3, 1.0)}, "published"),
    # the same prompt sources in CAS-DAP's shared pipeline
    Row("shared-none", DAP, f"{NONE} {SHARED_TASK}", {**LR, **SHRINK}, "shared"),
    Row("shared-static", DAP, f"{STATIC} {SHARED_TASK}", {**LR, **SHRINK}, "shared"),
    Row("shared-dap", DAP, SHARED_TASK, {**LR, **SHRINK}, "shared"),
    Row("shared-l2p", "configs/dap/l2p_{stream}.yaml", SHARED, {**LR, **SHRINK}, "shared"),
    Row("shared-dualprompt", "configs/dap/dualprompt_{stream}.yaml", f"{SHARED} MODEL.DAP.TASK_INFERENCE gaussian",
        {**LR, **SHRINK}, "shared"),
    Row("shared-coda_prompt", "configs/dap/coda_prompt_{stream}.yaml", SHARED, {**LR, **SHRINK}, "shared"),
    # the adapted query's class Gaussians alone (log-likelihood with log-determinant, SHRINKAGE): a
    # shared-pipeline run without prompts that keeps them (FUSION_WEIGHT > 0), scored from its
    # checkpoints without the prompted prediction
    Row("query-gaussians", DAP, f"{NONE} {SHARED_TASK} MODEL.DAP.FUSION_WEIGHT 1.0", {**LR, **SHRINK},
        query_alone=True),
    # class-statistics classifiers on the pretrained backbone and on one adapted on the first task
    Row("slda", STREAM, "MODEL.TRANSFER_TYPE slda",
        {"BASELINES.SLDA_SHRINKAGE": ["auto", 1e-4, 1e-3, 1e-2, 0.1, 0.5]}),
    Row("slda-first-session", STREAM, "MODEL.TRANSFER_TYPE slda BASELINES.FIRST_SESSION True",
        {**LR, "BASELINES.SLDA_SHRINKAGE": ["auto", 1e-4, 1e-3, 1e-2, 0.1, 0.5]}),
    Row("fecam", STREAM, "MODEL.TRANSFER_TYPE fecam",
        {"BASELINES.FECAM_SHRINKAGE": [1.0, "auto", 0.1, 0.01, 0.003, 1e-3]}),
    Row("fecam-first-session", STREAM, "MODEL.TRANSFER_TYPE fecam BASELINES.FIRST_SESSION True",
        {**LR, "BASELINES.FECAM_SHRINKAGE": [1.0, "auto", 0.1, 0.01, 0.003, 1e-3]}),
    Row("ranpac", STREAM, "MODEL.TRANSFER_TYPE ranpac",
        {"BASELINES.RANPAC_RIDGE": ["auto", 1e-2, 1.0, 1e2, 1e4]}),
    Row("ranpac-first-session", STREAM, "MODEL.TRANSFER_TYPE ranpac BASELINES.FIRST_SESSION True",
        {**LR, "BASELINES.RANPAC_RIDGE": ["auto", 1e-2, 1.0, 1e2, 1e4]}),
    # rehearsal (a class-balanced buffer of 200 images) and the joint-training bound
    Row("replay", STREAM, "MODEL.TRANSFER_TYPE replay BASELINES.REPLAY_MEM_SIZE 200",
        {**LR, "BASELINES.BACKBONE_LR_SCALE": (0.01, 1.0)}),
    Row("joint", STREAM, "MODEL.TRANSFER_TYPE joint", {**LR, "BASELINES.BACKBONE_LR_SCALE": (0.01, 1.0)}),
]


def row_names() -> list[str]:
    return [r.name for r in ROWS]
