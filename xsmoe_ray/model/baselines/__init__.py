"""Baselines that are not XSMoE variants: one module per method (issue 19), each a ``StreamModel``."""

from .mmmlp import MMMLP
from .sasrec_id import SASRecID

__all__ = ["MMMLP", "SASRecID"]
