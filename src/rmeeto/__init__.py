"""rmeeto: faster Vision Mamba through merged-token re-training (R-MeeTo), in pure PyTorch.

    import rmeeto
    model = rmeeto.create_model("vim_small_patch16_224", checkpoint_path="vim_s_midclstok_80p5acc.pth")
"""

__version__ = "0.1.0"

from rmeeto.models import ModelConfig, VimArch, get_config, inspect_checkpoint, list_models  # noqa: E402
from rmeeto.models.vim import TokenState, VisionMamba  # noqa: E402
from rmeeto.merge import MergeConfig, apply_merge, remove_merge, trace_tokens  # noqa: E402
from rmeeto.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from rmeeto import merge_vit as _merge_vit  # noqa: E402,F401  (registers the timm ViT patch with apply_merge)
from rmeeto.hub import create_model  # noqa: E402  (builder + published weights; registers the models with timm)

__all__ = [
    "__version__",
    "MergeConfig",
    "ModelConfig",
    "TokenState",
    "VimArch",
    "VisionMamba",
    "CheckpointError",
    "inspect_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "apply_merge",
    "remove_merge",
    "trace_tokens",
    "create_model",
    "get_config",
    "list_models",
]
