"""DAP's default settings, in one place and torch-free.

The keyword defaults of :class:`casdap.models.dap.CASDAP` (and of the DAP strategy's loss weights)
and the ``MODEL.DAP`` defaults of the config (:mod:`casdap.config.defaults`) are both read from
here, so the Python API and a config with no ``MODEL.DAP`` section build the same model. Plain
constants only: the config and the command line import this module before torch.
"""

from __future__ import annotations

NUM_TASKS = 10  # MODEL.DAP.PROMPT_POOL: key groups, one per task
NUM_TASK_EMBEDDINGS = 10  # MODEL.DAP.NUM_TASKS_FOR_EMB: rows of the task-embedding table (CASDAP: None = num_tasks)
KEYS_PER_TASK = 1  # MODEL.DAP.KEYS_PER_TASK: keys per task; the nearest speaks for its task (DAP: one)
NUM_TOKENS = 3  # MODEL.DAP.NUM_DAP_TOKENS: prompt tokens per prompted block (0: prompts off, as source none)
TASK_EMB_DIM = 64  # MODEL.DAP.TASK_EMB: task-embedding width (FiLM input)
STAGES = (2, 3)  # MODEL.DAP.STAGES: CAS-ViT stages whose blocks are prompted (docs/dap_on_casvit.md)
INJECTION = "kv"  # MODEL.DAP.INJECTION: kv | attn | pool
CHANNEL_MIX = False  # MODEL.DAP.CHANNEL_MIX: the generator also mixes channels
TASK_GENERATORS = False  # MODEL.DAP.TASK_GENERATORS: every task its own generator maps
PROMPT_LAST_BLOCK = True  # prompts in the backbone's very last block (the config's None follows DATA.NAME)
SELECTION = "per_image"  # MODEL.DAP.SELECTION: per_image | batch_majority | oracle
PROMPT_SOURCE = "dap"  # MODEL.DAP.PROMPT_SOURCE: prompt-source registry entry (casdap.dap_registry.PROMPT_SOURCES)
TASK_PREDICTOR = "keys"  # task-predictor registry entry (casdap.dap_registry.TASK_PREDICTORS)
QUERY = "frozen"  # MODEL.DAP.QUERY: frozen (DAP's) | adapted (a backbone trained on the first task, then frozen)
ALL_CLASS_HEAD = "pseudo"  # MODEL.DAP.ALL_CLASS_HEAD: pseudo (HiDe: trained on pseudo-features) | lda (closed form)
PROMPT_BACKBONE = "pretrained"  # MODEL.DAP.PROMPT_BACKBONE: pretrained (DAP's) | adapted (the query's adapted one)

CURRENT_LAMBDA = 1.0  # MODEL.DAP.CURRENT_LAMBDA: weight of the masked cross-entropy
SIM_LAMBDA = 0.5  # MODEL.DAP.SIM_LAMBDA: weight of the key-query pull term
