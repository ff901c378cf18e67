"""Every ``model.variant``: which class builds it, and rebuilding a model from its checkpoint structure."""

from __future__ import annotations

from .base import StreamModel
from .baselines import GAG, MMMLP, SSRM, LGMRec, SASRecID
from .side_moe import ExpertStart
from .xsmoe import VARIANTS as XSMOE_VARIANTS
from .xsmoe import XSMoE, build_xsmoe

MODEL_CLASSES: dict[str, type[StreamModel]] = {
    **{v: XSMoE for v in XSMOE_VARIANTS},
    **{v: SASRecID for v in SASRecID.VARIANTS},
    **{v: MMMLP for v in MMMLP.VARIANTS},
    **{v: GAG for v in GAG.VARIANTS},
    **{v: SSRM for v in SSRM.VARIANTS},
    **{v: LGMRec for v in LGMRec.VARIANTS},
}
ID_MODELS = (SASRecID, MMMLP, GAG, SSRM, LGMRec)  # need n_item_rows
USER_MODELS = (GAG, SSRM, LGMRec)  # need n_user_rows
CONTENT_ID_MODELS = (MMMLP, LGMRec)  # ID models that also read frozen features
ALL_VARIANTS = tuple(MODEL_CLASSES)


def build_model(variant: str, *, text_dim: int | None, image_dim: int | None, n_groups: int, d_prime: int,
                embed_dim: int, max_len: int, seq_blocks: int, seq_heads: int, dropout: float,
                modalities: tuple[str, ...] = ("image", "text"), kd_weight: float = 1.0,
                feature_norm: str = "none", expert_start: ExpertStart = ExpertStart(),
                n_item_rows: int | None = None, n_user_rows: int | None = None, item_ids: bool = False,
                item_id_dropout: float = 0.0) -> StreamModel:
    """The model of ``variant``; ID models need ``n_item_rows`` (items + 1), models with a user table
    ``n_user_rows`` (users + 1), content models the dims; ``item_ids``: XSMoE's ID table (needs
    ``n_item_rows`` too), ``item_id_dropout`` its rows' drop rate in training; ``expert_start``: how
    an expandable variant's new experts start."""
    if variant not in MODEL_CLASSES:
        raise ValueError(f"unknown variant {variant!r}; variants: {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[variant]
    if cls in ID_MODELS and not n_item_rows:
        raise ValueError(f"variant {variant!r} needs n_item_rows (the number of items + 1)")
    if cls in USER_MODELS and not n_user_rows:
        raise ValueError(f"variant {variant!r} needs n_user_rows (the number of users + 1)")
    if cls is GAG:
        return GAG(variant=variant, n_item_rows=n_item_rows, n_user_rows=n_user_rows, embed_dim=embed_dim,
                   max_len=max_len)
    if cls is SSRM:
        return SSRM(variant=variant, n_item_rows=n_item_rows, n_user_rows=n_user_rows, embed_dim=embed_dim,
                    max_len=max_len, dropout=dropout)
    dims = {m: d for m, d in (("image", image_dim), ("text", text_dim)) if m in modalities and d}
    if cls in CONTENT_ID_MODELS and not dims:
        raise ValueError(f"variant {variant!r} needs at least one content modality (text_dim / image_dim)")
    if cls is LGMRec:
        return LGMRec(variant=variant, n_item_rows=n_item_rows, n_user_rows=n_user_rows, dims=dims,
                      embed_dim=embed_dim, max_len=max_len, kd_weight=kd_weight)
    if cls is MMMLP:
        return MMMLP(variant=variant, n_item_rows=n_item_rows, dims=dims, embed_dim=embed_dim, max_len=max_len,
                     seq_blocks=seq_blocks, dropout=dropout, kd_weight=kd_weight)
    if MODEL_CLASSES[variant] is SASRecID:
        return SASRecID(variant=variant, n_item_rows=n_item_rows, embed_dim=embed_dim, max_len=max_len,
                        seq_blocks=seq_blocks, seq_heads=seq_heads, dropout=dropout, kd_weight=kd_weight)
    return build_xsmoe(variant, text_dim=text_dim, image_dim=image_dim, n_groups=n_groups, d_prime=d_prime,
                       embed_dim=embed_dim, max_len=max_len, seq_blocks=seq_blocks, seq_heads=seq_heads,
                       dropout=dropout, modalities=modalities, kd_weight=kd_weight, feature_norm=feature_norm,
                       expert_start=expert_start, item_ids=item_ids, n_item_rows=n_item_rows or 0,
                       item_id_dropout=item_id_dropout)


def model_from_structure(structure: dict) -> StreamModel:
    """Rebuild the architecture a checkpoint describes (then ``load_state_dict`` the weights)."""
    variant = structure.get("variant")
    if variant not in MODEL_CLASSES:
        raise ValueError(f"checkpoint of an unknown variant {variant!r}; variants: {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[variant].from_structure(structure)
