"""XSMoE model (paper §4): experts, routers, side networks, sequence encoder, loss, baselines, accounting."""

from .baselines import ReservoirBuffer
from .encoder import SequenceEncoder
from .expert import Expert
from .loss import batch_candidates, debiased_ce, distillation_kl, fused_debiased_ce, masked_logits
from .params import count_parameters, format_report, paper_side_parameters, parameter_report, side_parameters
from .router import Router
from .side_moe import SideLayer, SideNetwork
from .xsmoe import MODALITIES, VARIANTS, VariantSpec, XSMoE, build_model

__all__ = [
    "Expert", "Router", "SideLayer", "SideNetwork", "SequenceEncoder", "XSMoE", "VariantSpec", "VARIANTS",
    "MODALITIES", "build_model", "ReservoirBuffer", "batch_candidates", "masked_logits", "debiased_ce",
    "fused_debiased_ce", "distillation_kl", "count_parameters", "parameter_report", "format_report", "side_parameters",
    "paper_side_parameters",
]
