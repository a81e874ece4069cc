"""Every setting of a continual-learning run, with its default (yacs, DAP's key layout).

DAP's own keys keep their names and defaults so its YAML files load unchanged; CAS-ViT and
project keys are added under the same nodes. YAML files state only differences. The ``MODEL.DAP``
defaults come from :mod:`casdap.dap_defaults`, which the model's keyword defaults also read.
"""

from yacs.config import CfgNode as CN

from casdap import dap_defaults as D

_C = CN()

_C.DBG = False
_C.OUTPUT_DIR = ""  # run directory; "" (as in DAP's base file): output/<DATA.NAME>/<method>/seed<SEED>
_C.RUN_N_TIMES = 1  # accepted for DAP compatibility; one run per invocation (use SEED for repeats)
_C.CUDNN_BENCHMARK = False
_C.NUM_GPUS = 1  # informational: processes come from torchrun
_C.NUM_SHARDS = 1
_C.SEED = None  # None: 0
_C.DEVICE = "auto"  # auto | cpu | cuda
_C.USE_AMP = False  # bf16 autocast around every forward pass (CPU, and CUDA GPUs with bf16)

# ---------------------------------------------------------------- continual protocol
_C.CONTINUAL = CN()
_C.CONTINUAL.INITIAL = 10  # classes in the first task
_C.CONTINUAL.INCREMENT = 10  # classes in each later task
_C.CONTINUAL.N_TASKS = 10
_C.CONTINUAL.SHUFFLE_CLASSES = False  # False: natural label order (DAP protocol); True: seeded shuffle
_C.CONTINUAL.COLOR_JITTER = None  # training augmentation (timm create_transform)
_C.CONTINUAL.AA = None
_C.CONTINUAL.REPROB = 0.0
_C.CONTINUAL.REMODE = "pixel"
_C.CONTINUAL.RECOUNT = 1
_C.CONTINUAL.RESPLIT = False
# CAS-ViT's --multi_scale_sampler: each training batch is resized to a side drawn from the sampler's
# scales (5/7 to 10/7 of DATA.CROPSIZE, multiples of 32); evaluation stays at DATA.CROPSIZE.
_C.CONTINUAL.MULTI_SCALE = False
# A run keeps only its newest task checkpoint (what resume and export read); True keeps every task's
# checkpoints/task_NNN.pth (e.g. to compare a model after each task).
_C.CONTINUAL.KEEP_TASK_CHECKPOINTS = False

# ---------------------------------------------------------------- model
_C.MODEL = CN()
# Method: dap | finetune | linear | ewc | lwf | replay | ncm | ranpac | slda | fecam | aper | joint | l2p |
# dualprompt | coda_prompt
_C.MODEL.TRANSFER_TYPE = "dap"
_C.MODEL.TYPE = "casvit"  # backbone family; DAP's "vit" is accepted as an alias
_C.MODEL.BACKBONE = "rcvit_xs"  # rcvit_xs | rcvit_s | rcvit_m | rcvit_t (rcvit_test: tests only)
_C.MODEL.WEIGHT_PATH = ""  # pretrained backbone file; else MODEL_ROOT/<BACKBONE>.pth
_C.MODEL.MODEL_ROOT = "./model"
_C.MODEL.RANDOM_INIT = False  # explicitly allow a randomly initialised backbone (labelled in every output)
# False: a finished run keeps no checkpoint (while it runs, its newest is kept for resuming)
_C.MODEL.SAVE_CKPT = True
# True: every frozen backbone (CAS-DAP's and its query's, a prompt pool's, a frozen-feature baseline's
# once frozen) runs with its BatchNorms folded into its convolutions, on channels-last memory, during
# continual training and evaluation (casdap.models.frozen_fold); checkpoints keep the unfolded layout.
# Faster (docs/performance.md), but float rounding changes (logits within 1e-5), so results are not
# bit-identical to a run without it.
_C.MODEL.FOLD_FROZEN_BN = False
_C.MODEL.NUM_HEAD = 12  # DAP (ViT) key, unused by CAS-ViT
_C.MODEL.MLP_NUM = 0
_C.MODEL.LINEAR = CN()
_C.MODEL.LINEAR.MLP_SIZES = []
_C.MODEL.LINEAR.DROPOUT = 0.1

_C.MODEL.DAP = CN()
_C.MODEL.DAP.DROPOUT = 0.3  # accepted from DAP's layout; unused
_C.MODEL.DAP.INIT = None  # accepted from DAP's layout; unused
_C.MODEL.DAP.CURRENT_LAMBDA = D.CURRENT_LAMBDA  # weight of the masked cross-entropy
_C.MODEL.DAP.SIM_LAMBDA = D.SIM_LAMBDA  # weight of the key-query pull term
_C.MODEL.DAP.NUM_DAP_TOKENS = D.NUM_TOKENS  # prompt tokens generated per prompted block (0: as PROMPT_SOURCE none)
# Prompt source (casdap.dap_registry.PROMPT_SOURCES): dap (DAP's instance-level generator) | static
# (learned tokens per task, DAP without the instance-level part) | none (no prompt: the prompts-off ablation).
# The registry's prompt pools (l2p, dualprompt, coda_prompt) are run by MODEL.TRANSFER_TYPE of their name.
_C.MODEL.DAP.PROMPT_SOURCE = D.PROMPT_SOURCE
_C.MODEL.DAP.TASK_EMB = D.TASK_EMB_DIM  # task-embedding width (FiLM input)
_C.MODEL.DAP.NUM_TASKS_FOR_EMB = D.NUM_TASK_EMBEDDINGS  # rows of the task-embedding table
_C.MODEL.DAP.PROMPT_POOL = D.NUM_TASKS  # number of key groups, one per task (DAP: one key each)
_C.MODEL.DAP.KEYS_PER_TASK = D.KEYS_PER_TASK  # keys per task; the nearest speaks for its task (docs/dap_on_casvit.md)
_C.MODEL.DAP.STAGES = list(D.STAGES)  # CAS-ViT stages (0-3) whose blocks are prompted (measured: docs/dap_on_casvit.md)
_C.MODEL.DAP.INJECTION = D.INJECTION  # kv (extra keys/values) | attn (softmax over prompts) | pool; dap_on_casvit.md
_C.MODEL.DAP.CHANNEL_MIX = D.CHANNEL_MIX  # prompt generator also mixes channels (trained on task 1, then frozen)
_C.MODEL.DAP.TASK_GENERATORS = D.TASK_GENERATORS  # every task its own generator maps (trained on its own images only)
_C.MODEL.DAP.SELECTION = D.SELECTION  # inference key selection: per_image | batch_majority | oracle
_C.MODEL.DAP.REPLAY_MEM_SIZE = 0  # >0: Avalanche's ReplayPlugin, class-balanced buffer of this many images; 0: none
# At inference keep only the selected key's task classes. None: as DAP's reference does for
# DATA.NAME (True for imagenet_r, else False); see REFERENCE_DATASET_DEFAULTS in casdap.config.
_C.MODEL.DAP.RESTRICT_TO_TASK = None
# Prompts in the very last block of the backbone. None: as the reference (False for imagenet_r).
_C.MODEL.DAP.PROMPT_LAST_BLOCK = None
# Task inference (casdap.dap_registry.TASK_PREDICTORS): keys (DAP's) | gaussian (class Gaussians of
# the query, FeCAM-like) | head (a classifier retrained on pseudo-queries from those Gaussians).
_C.MODEL.DAP.TASK_INFERENCE = D.TASK_PREDICTOR
# Task-adaptive prediction: restrict (DAP's; = RESTRICT_TO_TASK True) | all (a head over every seen
# class re-aligned on statistics of prompted features) | soft (top-k tasks' prompts, p(task) p(class|task)).
# None: as RESTRICT_TO_TASK says (restricted, or the trained head's logits over every class).
_C.MODEL.DAP.PREDICTION = None
_C.MODEL.DAP.TOP_K = 2  # prediction soft: tasks whose prompts each image runs with (cost: k prompted passes)
# Class covariances get SHRINKAGE x their mean variance on the diagonal (gaussian, head, all);
# choose it on the validation split (DATA.VALIDATION)
_C.MODEL.DAP.SHRINKAGE = 1.0
# The query: frozen (DAP's: the pretrained backbone) | adapted (a copy of the backbone trained with a
# linear head on the first task, as aper's first session: SOLVER.TOTAL_EPOCH epochs, backbone at
# BASELINES.BACKBONE_LR_SCALE; then frozen). PROMPT_BACKBONE: the backbone the prompted pass runs on,
# pretrained (DAP's) | adapted (the query's, so one backbone serves both: needs QUERY adapted).
_C.MODEL.DAP.QUERY = D.QUERY
_C.MODEL.DAP.PROMPT_BACKBONE = D.PROMPT_BACKBONE
# PREDICTION all: the head over every seen class, fitted on class statistics of the prompted features:
# pseudo (HiDe-Prompt's, trained on pseudo-features drawn from the class Gaussians) | lda (closed form)
_C.MODEL.DAP.ALL_CLASS_HEAD = D.ALL_CLASS_HEAD
# Fused prediction (casdap.continual.fusion): the final class scores are log p_prompted(y|x) + FUSION_WEIGHT *
# log p_query(y|x), p_query from the query's class Gaussians (log-determinant, SHRINKAGE as task inference).
# 0: unfused (the model keeps no Gaussians for it). Choose it on the validation split:
# python benchmarks/fusion_weight_validation.py (docs/dap_on_casvit.md)
_C.MODEL.DAP.FUSION_WEIGHT = 0.0

# Learned-prompt methods (l2p, dualprompt, coda_prompt; docs/prompt_methods.md). They are prompted in
# MODEL.DAP.STAGES through MODEL.DAP.INJECTION, and choose prompts by MODEL.DAP.SELECTION (per_image;
# batch_majority for l2p and dualprompt, oracle for dualprompt). Defaults: L2P's paper settings.
_C.MODEL.PROMPT = CN()
_C.MODEL.PROMPT.POOL_SIZE = 10  # l2p: prompts in the pool (M)
_C.MODEL.PROMPT.TOP_N = 5  # l2p: prompts each image takes (N)
_C.MODEL.PROMPT.LENGTH = 5  # tokens per prompt (l2p: per pool prompt; dualprompt: E-prompt; coda_prompt: per component)
_C.MODEL.PROMPT.G_LENGTH = 5  # dualprompt: tokens of each G-prompt
_C.MODEL.PROMPT.G_BLOCKS = 2  # dualprompt: the first G_BLOCKS prompted blocks take G-prompts, the rest E-prompts
_C.MODEL.PROMPT.COMPONENTS = 100  # coda_prompt: prompt components (the paper: 100), split evenly over CONTINUAL.N_TASKS
_C.MODEL.PROMPT.ORTHO_LAMBDA = 0.1  # coda_prompt: weight of the orthogonality penalty on P, K, A
_C.MODEL.PROMPT.PULL_LAMBDA = 0.1  # l2p, dualprompt: weight of the key-query pull term

# ---------------------------------------------------------------- non-DAP baselines
_C.BASELINES = CN()
_C.BASELINES.EWC_LAMBDA = 100.0
_C.BASELINES.LWF_ALPHA = 1.0
_C.BASELINES.LWF_TEMPERATURE = 2.0
_C.BASELINES.REPLAY_MEM_SIZE = 200  # class-balanced buffer, images in total
_C.BASELINES.BACKBONE_LR_SCALE = 0.1  # finetune/ewc/lwf/replay/joint, aper's first task: backbone lr = BASE_LR * this
_C.BASELINES.RANPAC_PROJ_DIM = 1000  # ranpac: size M of the fixed random projection (benchmarks/ranpac_proj_dim.py)
# ranpac: ridge strength; None (or auto): chosen after every task on held-out training images from 1e-8..1e8
_C.BASELINES.RANPAC_RIDGE = None
# slda: covariance shrinkage in [0, 1] ((1 - s) Sigma + s I); None (or auto): chosen after every task on
# held-out training images (casdap.continual.discriminants.SLDA_GRID)
_C.BASELINES.SLDA_SHRINKAGE = None
# fecam: covariance shrinkage gamma in [0, 1] (Sigma + gamma (V1 I + V2 (1 - I))); None: FeCAM's own, 1. auto:
# chosen after every task on its held-out training images, which favours the new classes
# (docs/prototype_baselines.md)
_C.BASELINES.FECAM_SHRINKAGE = None
# ncm/ranpac/slda/fecam: adapt the backbone on the first task as aper does (its epochs, optimizer and
# BACKBONE_LR_SCALE, with a linear head), then freeze it and build the classifier on its features
_C.BASELINES.FIRST_SESSION = False

# ---------------------------------------------------------------- solver
_C.SOLVER = CN()
_C.SOLVER.LOSS = "softmax"
_C.SOLVER.LOSS_ALPHA = 0.01
_C.SOLVER.OPTIMIZER = "sgd"  # sgd | adam | adamw
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.BETA1 = 0.9
_C.SOLVER.BETA2 = 0.9
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_BIAS = 0.0
_C.SOLVER.GRAD_CLIP = 1.0
_C.SOLVER.GRAD_CLIP_APPLY = False
_C.SOLVER.PATIENCE = 300
_C.SOLVER.SCHEDULER = "cosine"  # cosine | linear (DAP: warmup, then constant) | linear_decay | constant
_C.SOLVER.BASE_LR = 0.01
_C.SOLVER.BIAS_MULTIPLIER = 1.0
_C.SOLVER.WARMUP_EPOCH = 5
_C.SOLVER.WARMUP_STEPS = 0  # CAS-ViT's --warmup_steps: warmup iterations per task; > 0 overrides WARMUP_EPOCH
_C.SOLVER.TOTAL_EPOCH = 30  # epochs per task
_C.SOLVER.LOG_EVERY_N = 1000
_C.SOLVER.DBG_TRAINABLE = False
_C.SOLVER.AUTO_RESUME = False  # resume after the last finished task of OUTPUT_DIR

# ---------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.NAME = ""  # cifar100 | imagenet_r | folder | digits
_C.DATA.DATAPATH = ""
_C.DATA.FEATURE = ""  # DAP (ViT) key, unused
_C.DATA.PERCENTAGE = 1.0
# > 0: hold out this share of each class's training images and evaluate on them instead of the
# test set, to choose hyperparameters without seeing test images (0: evaluate on the test set).
_C.DATA.VALIDATION = 0.0
_C.DATA.NUMBER_CLASSES = -1
_C.DATA.MULTILABEL = False
_C.DATA.CLASS_WEIGHTS_TYPE = "none"
_C.DATA.CROPSIZE = 224  # input resolution
_C.DATA.TEST_SPLIT = 0.2  # folder data with no train/ test/ split: seeded held-out fraction
_C.DATA.NO_TEST = False
_C.DATA.BATCH_SIZE = 32
_C.DATA.EVAL_BATCH_SIZE = 0  # batch size of every evaluation pass; 0: DATA.BATCH_SIZE
_C.DATA.NUM_WORKERS = 4
_C.DATA.PIN_MEMORY = True

_C.DIST_BACKEND = "nccl"
_C.DIST_INIT_PATH = "env://"
_C.DIST_INIT_FILE = ""


def get_defaults() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
