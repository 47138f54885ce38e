"""The MBS-Net model zoo: configs, the registry, scans and models built from configs."""

from variants.config import ModelConfig
from variants.errors import MbsbenchError
from variants.registry import build, build_config, list_variants, resolve

__all__ = ["MbsbenchError", "ModelConfig", "build", "build_config", "list_variants", "resolve"]
