"""Baselines that are not XSMoE variants: one module per method (issue 19), each a ``StreamModel``."""

from .gag import GAG
from .lgmrec import LGMRec
from .mmmlp import MMMLP
from .sasrec_id import SASRecID
from .ssrm import SSRM

__all__ = ["GAG", "LGMRec", "MMMLP", "SASRecID", "SSRM"]
