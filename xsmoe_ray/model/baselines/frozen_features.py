"""The frozen last cached layer per modality, for ID baselines that also read content (MMMLP, LGMRec).

The cache holds every layer's pooled state ``[n_items+1, G+1, d]``; these models read the last one
(what ``noft`` reads), kept as non-persistent buffers ``features_<modality>`` (not in checkpoints) that a
distillation teacher shares instead of copying and DDP never broadcasts.
"""

from __future__ import annotations

import torch


class LastLayerFeatures:
    """Mixin for an ``nn.Module`` with ``modalities`` and ``variant``."""

    def _register_feature_buffers(self) -> None:
        for m in self.modalities:
            self.register_buffer(f"features_{m}", None, persistent=False)

    def _keep_last_layers(self, features: dict[str, torch.Tensor], device: torch.device) -> None:
        for m in self.modalities:
            if m not in features:
                raise ValueError(f"variant {self.variant!r} needs {m!r} features; got {sorted(features)}")
            setattr(self, f"features_{m}", features[m][:, -1].to(device))

    def _item_inputs(self) -> dict[str, torch.Tensor]:
        return {m: getattr(self, f"features_{m}") for m in self.modalities}

    def _shared_tensors(self) -> list[torch.Tensor]:
        return [t for t in self._item_inputs().values() if t is not None]

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        return [f"features_{m}" for m in self.modalities]
