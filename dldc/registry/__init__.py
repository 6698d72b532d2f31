"""The MLflow model registry of fine-tuned adapters, and champion promotion (``dldc promote``)."""

from dldc.registry.models import Registry, adapter_digest
from dldc.registry.promote import decide, promote

__all__ = ["Registry", "adapter_digest", "decide", "promote"]
