"""Models: the interface (base), XSMoE (paper §4) and its variants, baselines, replay, loss, accounting."""

from .base import SequentialModel, StreamModel
from .baselines import GAG, MMMLP, SSRM, LGMRec, SASRecID
from .encoder import SequenceEncoder
from .expert import Expert
from .loss import batch_candidates, debiased_ce, distillation_kl, fused_debiased_ce, masked_logits
from .params import count_parameters, format_report, paper_side_parameters, parameter_report, side_parameters
from .replay import ReservoirBuffer
from .router import Router
from .side_moe import ExpertStart, SideLayer, SideNetwork
from .variants import ALL_VARIANTS, build_model, model_from_structure
from .xsmoe import MODALITIES, VARIANTS, VariantSpec, XSMoE, build_xsmoe

__all__ = [
    "StreamModel", "SequentialModel", "SASRecID", "MMMLP", "GAG", "SSRM", "LGMRec", "ALL_VARIANTS", "model_from_structure", "build_xsmoe",
    "Expert", "ExpertStart", "Router", "SideLayer", "SideNetwork", "SequenceEncoder", "XSMoE", "VariantSpec", "VARIANTS",
    "MODALITIES", "build_model", "ReservoirBuffer", "batch_candidates", "masked_logits", "debiased_ce",
    "fused_debiased_ce", "distillation_kl", "count_parameters", "parameter_report", "format_report", "side_parameters",
    "paper_side_parameters",
]
