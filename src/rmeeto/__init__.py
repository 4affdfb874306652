"""rmeeto: faster Vision Mamba through merged-token re-training (R-MeeTo), in pure PyTorch.

    import rmeeto
    model = rmeeto.create_model("vim_small_patch16_224", checkpoint_path="vim_s_midclstok_80p5acc.pth")
"""

__version__ = "0.1.0"

from rmeeto.models import ModelConfig, VimArch, get_config, inspect_checkpoint, list_models  # noqa: E402
from rmeeto.models.vim import TokenState, VisionMamba  # noqa: E402
from rmeeto.merge import MergeConfig, apply_merge, remove_merge, trace_tokens  # noqa: E402
from rmeeto.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from rmeeto.hub import create_model, register_with_timm  # noqa: E402  (builder + published weights)
from rmeeto._lazy import after_import  # noqa: E402


def _on_timm_import() -> None:
    """Once timm is imported (a timm ViT can exist only then): the Vim models go into timm's registry
    (``timm.create_model("vim_small_patch16_224")``), and :mod:`rmeeto.merge_vit` registers the ViT patch of
    :func:`apply_merge`. Deferred so that ``import rmeeto`` does not import timm (~3 s)."""
    register_with_timm()
    from rmeeto import merge_vit  # noqa: F401


after_import("timm", _on_timm_import)

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
