"""File names, format identifiers and size caps: defined once, used everywhere."""

from __future__ import annotations

# Format identity -----------------------------------------------------------
FORMAT_NAME = "asa-bundle"
FORMAT_MAJOR = 1
FORMAT_MINOR = 1  # the newest minor version this implementation reads and writes
FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"  # the specification's version
FORMAT_VERSION_BASE = f"{FORMAT_MAJOR}.0"  # written when a bundle uses no 1.1 feature
# Features a 1.1 manifest names in `requires`; a reader refuses a feature it lacks.
FEATURE_INTERVENTIONS = "interventions"
FEATURE_CARD = "card"
FEATURES = (FEATURE_CARD, FEATURE_INTERVENTIONS)
PRODUCER_NAME = "asa-format"

# File names inside a bundle ---------------------------------------------------
MANIFEST_FILE = "manifest.json"
VECTORS_FILE = "vectors.safetensors"
SCALER_FILE = "scaler.onnx"
ROUTER_FILE = "router.onnx"
PROBE_FILE_TEMPLATE = "probe_{index}.onnx"  # index = position of the domain in `domains`
SIGNATURE_FILE = "model.sig"  # OpenSSF model-signing default name; excluded from `files`
INTERVENTIONS_FILE = "interventions.safetensors"  # 1.1: vectors of always/condition interventions
CARD_FILE = "README.md"  # 1.1: the hub model card
GLOBAL_VECTOR = "global"  # reserved tensor name of the global steering vector

# Graph interface (names of inputs and outputs) --------------------------------
SCALER_INPUT = "hidden"
SCALER_OUTPUT = "x"
CLASSIFIER_INPUT = "x"
CLASSIFIER_LABEL = "label"
CLASSIFIER_PROBABILITIES = "probabilities"

# Layer tensor naming -----------------------------------------------------------
LAYER_TENSOR_BLOCK_OUTPUT = "decoder_block_output"

# Injection policies ------------------------------------------------------------
POLICY_PREFILL_LAST_TOKEN = "prefill_last_token"
POLICY_ALL_TOKENS = "all_tokens"
POLICY_GENERATED_TOKENS = "generated_tokens"
POLICIES = (POLICY_PREFILL_LAST_TOKEN, POLICY_ALL_TOKENS, POLICY_GENERATED_TOKENS)

# Numeric constants of the decision function ------------------------------------
NORM_EPS = 1e-8  # v / (||v|| + NORM_EPS)
UNIT_NORM_TOLERANCE = 1e-4  # |‖vec‖ - 1| allowed for stored vectors

# Size caps (bytes unless stated) ----------------------------------------------
MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB
MAX_SAFETENSORS_HEADER_BYTES = 1 << 20  # 1 MiB
MAX_VECTORS_BYTES = 1 << 30  # 1 GiB
MAX_ONNX_BYTES = 256 << 20  # 256 MiB per graph
MAX_ONNX_NODES = 256
MAX_ONNX_NODE_INPUTS = 16  # inputs (and outputs) of one node
ONNX_COST_ALLOWANCE = 1 << 20  # fixed part of every graph cost budget (see onnx_cost.budget_for)
MAX_HIDDEN_SIZE = 1 << 17  # 131072
MAX_DOMAINS = 1024
MAX_FILES = MAX_DOMAINS + 8
MAX_SIGNATURE_BYTES = 4 << 20  # model.sig: a statement over MAX_FILES files is far smaller

# ONNX profile --------------------------------------------------------------------
# ONNX profile (spec section 6.1): versioned on its own; a profile minor version may
# only raise the maxima below, and a format minor version may adopt it.
ONNX_PROFILE_VERSION = "1.0"
ONNX_IR_VERSION_MIN = 7
ONNX_IR_VERSION_MAX = 11
ONNX_OPSET_RANGES = {"": (9, 23), "ai.onnx.ml": (1, 5)}

# Interventions (format 1.1) ---------------------------------------------------------
GATE_ALWAYS = "always"
GATE_ASA = "asa"
GATE_CONDITION = "condition"
GATE_KINDS = (GATE_ALWAYS, GATE_ASA, GATE_CONDITION)
COMPARATORS = ("greater_than", "less_than")
AGGREGATES = ("mean", "last")
DIRECTION_ROLE = "direction"
CONDITION_ROLE = "condition"
MAX_INTERVENTIONS = 64
MAX_INTERVENTION_BLOCKS = 1024
MAX_INTERVENTIONS_BYTES = 1 << 30  # 1 GiB, like vectors.safetensors
MAX_CARD_BYTES = 1 << 20  # 1 MiB
