"""XSMoE: side networks over cached backbone states, fusion, sequence encoder, scores (paper §4).

Item tower: per modality, the cached layer states ``[n, G+1, d]`` of the item, standardised per
layer when ``feature_norm='layer'`` (``feature_norm.py``), go through that modality's side network
(``side_moe.py``) to ``e^v`` / ``e^t``; the fusion layer gives
``e = FC([e^v; e^t])`` (Eq. 4). User tower: the causal sequence encoder over the item embeddings
(Eq. 6). Score: dot product (Eq. 7). Loss: in-batch debiased cross-entropy (Eq. 8, ``loss.py``).

The item tower runs once per *unique* item of a batch: ids are deduplicated, encoded, and the
sequences index into that small table. The cached states are registered, non-persistent buffers
(``set_item_features``), so they move with ``.to(device)`` but stay out of checkpoints, and they are
listed in ``_ddp_params_and_buffers_to_ignore`` so DDP never broadcasts them.

Variants (paper Tables 2-3 and DESIGN.md §5) are rows of :data:`VARIANTS`, picked by
:func:`build_xsmoe` (every variant, baselines included: ``variants.build_model``). ``model.structure()`` is a plain dict from which :meth:`XSMoE.from_structure`
rebuilds the architecture (experts per layer, which are frozen) before ``load_state_dict``.

``item_ids=True`` (``model.item_ids``, an extension beyond the paper, off by default) adds a trainable
item-ID row to every item's fused embedding, ``e = FC([e^v; e^t]) + E[i]``, the ID half of what MMMLP
scores with (its ID stream beat every content-only row on MovieLens-1M, docs/RESULTS.md). The table
is trained in every window (it neither expands nor freezes), follows ``id_table.py``'s rule
for ids never trained (an item first seen in a test chunk keeps its small random row, so content
alone scores it) and grows with the catalogue. ``item_id_dropout`` p (``model.item_id_dropout``):
in training each batch drops an item's ID row with chance p (no rescaling: a kept row is the
row evaluation adds), so the content path also learns to score an item alone, as it must for
an item never trained (DropoutNet's idea, Volkovs et al. 2017).

Departures from the paper, all open points it leaves: experts, routers and the fusion layer have
biases; a new router row starts as the mean of the expert rows; utilization (Eq. 5) is the
experts' shares as the equation is written (DESIGN.md) and is averaged over the unique items the side network
saw, not over interactions; the loss is a mean over target positions, not a sum; the sequence
encoder is pre-LN (``encoder.py``). Training follows SASRec: every loss position of a row predicts
its next item, not only the last one (which positions carry loss: ``train/data.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import SequentialModel
from .id_table import IdTable, match_catalogue
from .feature_norm import LayerStandardizer
from .side_moe import ExpertStart, SideNetwork

MODALITIES = ("image", "text")  # fusion order: [e_v; e_t] (Eq. 4)
FEATURE_NORMS = ("none", "layer")


@dataclass(frozen=True)
class VariantSpec:
    side: bool  # side networks (False: the last cached state l_M goes straight into fusion)
    expandable: bool  # a new expert per layer at every window start
    modality: str | None = None  # one modality only (None: every modality the data has)
    replay: bool = False  # the trainer mixes a ReservoirBuffer into training batches
    distill: bool = False  # KL to a frozen copy of the model taken at the window start


VARIANTS: dict[str, VariantSpec] = {
    "xsmoe": VariantSpec(side=True, expandable=True),
    "static": VariantSpec(side=True, expandable=False),
    "noft": VariantSpec(side=False, expandable=False),
    "visual": VariantSpec(side=True, expandable=True, modality="image"),
    "textual": VariantSpec(side=True, expandable=True, modality="text"),
    "iisan_rh": VariantSpec(side=True, expandable=False, replay=True),
    "iisan_kd": VariantSpec(side=True, expandable=False, distill=True),
}


# ExpertStart's fields under the structure keys checkpoints have always used (the config's names)
_START_KEYS = {"new_expert_init": "init", "new_expert_share": "share", "new_expert_copy_share": "copy_share"}


def expert_start_args(start: ExpertStart) -> dict:
    """``start`` as structure keys; the copy share only when it is not 0.5, so a structure written
    before it existed reads the same."""
    args = {key: getattr(start, field) for key, field in _START_KEYS.items()}
    if start.copy_share == 0.5:
        del args["new_expert_copy_share"]
    return args


class XSMoE(SequentialModel):
    """The whole recommender. ``dims`` maps each modality it uses to its backbone width ``d``."""

    def __init__(self, *, variant: str, dims: dict[str, int], n_groups: int, d_prime: int, embed_dim: int,
                 max_len: int, seq_blocks: int, seq_heads: int, dropout: float, kd_weight: float = 1.0,
                 feature_norm: str = "none", expert_start: ExpertStart = ExpertStart(),
                 item_ids: bool = False, n_item_rows: int = 0, item_id_dropout: float = 0.0) -> None:
        super().__init__()
        if item_ids and n_item_rows < 1:
            raise ValueError("item_ids needs n_item_rows (the number of items + 1)")
        if not 0.0 <= item_id_dropout < 1.0 or (item_id_dropout and not item_ids):
            raise ValueError(f"item_id_dropout must be in [0, 1) and needs item_ids, got {item_id_dropout}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; variants: {sorted(VARIANTS)}")
        if not dims or set(dims) - set(MODALITIES):
            raise ValueError(f"dims must map a non-empty subset of {MODALITIES} to sizes, got {dims}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"unknown feature_norm {feature_norm!r}; one of {FEATURE_NORMS}")
        self.variant, self.spec = variant, VARIANTS[variant]
        self.modalities = tuple(m for m in MODALITIES if m in dims)
        self.args = dict(variant=variant, dims={m: int(dims[m]) for m in self.modalities}, n_groups=n_groups,
                         d_prime=d_prime, embed_dim=embed_dim, max_len=max_len, seq_blocks=seq_blocks,
                         seq_heads=seq_heads, dropout=dropout, kd_weight=kd_weight, feature_norm=feature_norm,
                         **expert_start_args(expert_start))
        if item_ids:  # only then, so the structure of a model without the table stays as it was
            self.args.update(item_ids=True, n_item_rows=int(n_item_rows))
        if item_id_dropout:
            self.args.update(item_id_dropout=float(item_id_dropout))
        self.n_groups, self.expert_start = n_groups, expert_start
        self.sides = nn.ModuleDict(
            {m: SideNetwork(dims[m], d_prime, n_groups) for m in self.modalities} if self.spec.side else {})
        self.norms = nn.ModuleDict(
            {m: LayerStandardizer(n_groups + 1, dims[m]) for m in self.modalities} if feature_norm == "layer" else {})
        self.fusion = nn.Linear(sum(dims[m] for m in self.modalities), embed_dim)
        self.item_table = IdTable(n_item_rows, embed_dim, std=0.02) if item_ids else None  # as SASRec-ID/MMMLP
        self._init_user_tower(embed_dim=embed_dim, max_len=max_len, seq_blocks=seq_blocks, seq_heads=seq_heads,
                              dropout=dropout, distill=self.spec.distill, kd_weight=kd_weight)
        for m in self.modalities:
            self.register_buffer(f"features_{m}", None, persistent=False)
        self.mark_trainable()

    @property
    def replay(self) -> bool:
        return self.spec.replay

    @property
    def tracks_utilization(self) -> bool:
        return bool(self.sides)  # noft has no side network: nothing to track

    # ---- cached features -----------------------------------------------------------------------
    def set_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """Cached states per modality ``[n_items+1, G+1, d]`` (row 0 = padding); other modalities are ignored."""
        for m in self.modalities:
            if m not in features:
                raise ValueError(f"variant {self.variant!r} needs {m!r} features; got {sorted(features)}")
            t = features[m]
            want = (self.n_groups + 1, self.args["dims"][m])
            if t.dim() != 3 or tuple(t.shape[1:]) != want:
                raise ValueError(f"{m} features must be [n_items+1, {want[0]}, {want[1]}], got {tuple(t.shape)}")
            setattr(self, f"features_{m}", t.to(self.fusion.weight.device))
        if self.item_table is not None:
            match_catalogue(self, {m: features[m] for m in self.modalities})

    def fit_feature_norm(self, item_ids: torch.Tensor) -> None:
        """Fix the per-layer standardisation (``feature_norm='layer'``) from the cached states of
        ``item_ids`` (the items of D_0, at warm-up); a no-op without standardisation."""
        features = self._features()
        for m, norm in self.norms.items():
            norm.fit(features[m].index_select(0, item_ids.to(features[m].device)))

    def _features(self) -> dict[str, torch.Tensor]:
        feats = {m: getattr(self, f"features_{m}") for m in self.modalities}
        missing = [m for m, t in feats.items() if t is None]
        if missing:
            raise RuntimeError(f"no cached features for {missing}: call model.set_item_features first")
        return feats

    def _item_inputs(self) -> dict[str, torch.Tensor]:
        return self._features()

    def _shared_tensors(self) -> list[torch.Tensor]:
        return list(self._features().values())

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        return [f"features_{m}" for m in self.modalities]

    # ---- towers --------------------------------------------------------------------------------
    def _embed(self, item_ids: torch.Tensor, features: dict[str, torch.Tensor]) -> torch.Tensor:
        # FC([e_v; e_t]) = W_v e_v + W_t e_t + b: the fusion weight is applied in column blocks, so the
        # [n, sum d] concatenation is never built (Eq. 4).
        out, start = None, 0
        for m in self.modalities:
            cache = features[m].index_select(0, item_ids).float()  # [n, G+1, d]
            if m in self.norms:
                cache = self.norms[m](cache)
            e = self.sides[m](cache) if self.spec.side else cache[:, -1]  # [n, d]
            w = self.fusion.weight[:, start:start + e.shape[1]]  # [D, d]
            out = F.linear(e, w, self.fusion.bias) if out is None else out + F.linear(e, w)
            start += e.shape[1]
        if self.item_table is None:
            return out  # [n, D]
        rows = self.item_table(item_ids)
        drop = self.args.get("item_id_dropout", 0.0)
        if self.training and drop:  # the item is scored by content alone in this batch
            rows = rows * (torch.rand(rows.shape[0], 1, device=rows.device) >= drop).to(rows.dtype)
        return out + rows  # [n, D]

    @property
    def n_item_rows(self) -> int:
        """Rows of the cached features: ``n_items + 1`` (row 0 = padding)."""
        return int(next(iter(self._features().values())).shape[0])

    # ---- structure: expansion, teacher, pruning ------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Newest experts + routers (by structure), fusion FC, sequence encoder, the ID table if any."""
        params = [p for side in self.sides.values() for p in side.trainable_parameters()]
        ids = list(self.item_table.parameters()) if self.item_table is not None else []
        return params + list(self.fusion.parameters()) + list(self.encoder.parameters()) + ids

    def mark_trainable(self) -> None:
        self.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    def expand(self) -> bool:
        """Freeze all experts and add one per layer (expandable variants); False and no change otherwise."""
        if not (self.spec.expandable and self.spec.side):
            return False
        for side in self.sides.values():
            side.expand(self.expert_start)
        self.mark_trainable()
        return True

    def begin_window(self) -> bool:
        """Window ``s >= 1`` start: expand (xsmoe, visual, textual) and snapshot the teacher (iisan_kd)."""
        expanded = self.expand()
        super().begin_window()
        return expanded

    def set_utilization_tracking(self, on: bool, weights: torch.Tensor | None = None) -> None:
        for side in self.sides.values():
            for layer in side.layers:
                layer.track_utilization, layer.track_weights = on, weights if on else None

    def reset_utilization(self) -> None:
        for side in self.sides.values():
            for layer in side.layers:
                layer.reset_utilization()

    def utilization_sums(self) -> dict[str, torch.Tensor]:
        """``{"<modality>.<layer>.sum": [N_i] float64, "<modality>.<layer>.count": [1]}``; all_reduce each (SUM)."""
        out = {}
        for m, side in self.sides.items():
            for i, layer in enumerate(side.layers):
                out[f"{m}.{i}.sum"], out[f"{m}.{i}.count"] = (t.clone() for t in layer.utilization_sums())
        return out

    def router_weights(self) -> dict[str, list[list[float]]]:
        """Mean router weights ``[alpha_0 (backbone), alpha_1..N (experts)]`` per modality and layer over the
        last tracked pass (this rank's samples; a report, not a decision)."""
        return {m: [(layer.router_sums() / layer.utilization_sums()[1].clamp_min(1)).tolist() for layer in side.layers]
                for m, side in self.sides.items()}

    def utilization(self, sums: dict[str, torch.Tensor] | None = None) -> dict[str, list[list[float]]]:
        """Mean utilization r_j (Eq. 5) per modality, layer and expert."""
        sums = self.utilization_sums() if sums is None else sums
        return {m: [(sums[f"{m}.{i}.sum"] / sums[f"{m}.{i}.count"].clamp_min(1)).tolist()
                    for i in range(len(side.layers))] for m, side in self.sides.items()}

    def prune(self, tau: float, sums: dict[str, torch.Tensor] | None = None) -> dict[str, dict[int, int]]:
        """Per layer drop the single lowest expert with mean utilization < ``tau`` (§4.3; never the last).

        ``sums`` are (all-reduced) :meth:`utilization_sums`; default: this model's own. Returns
        ``{modality: {layer: removed 0-based expert index}}`` (router output ``index+1`` went with it).
        """
        sums = self.utilization_sums() if sums is None else sums
        removed: dict[str, dict[int, int]] = {}
        for m, side in self.sides.items():
            for i, layer in enumerate(side.layers):
                j = layer.prune_candidate(tau, sums[f"{m}.{i}.sum"], sums[f"{m}.{i}.count"])
                if j is not None:
                    layer.remove_expert(j)
                    removed.setdefault(m, {})[i] = j
        self.reset_utilization()
        self.mark_trainable()
        return removed

    def experts_per_layer(self) -> dict[str, list[int]]:
        return {m: [len(flags) for flags in layers] for m, layers in self.structure()["experts"].items()}

    def parameter_parts(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {f"side_{m}": side for m, side in self.sides.items()}
        ids = {"item_table": self.item_table} if self.item_table is not None else {}
        return {**parts, "fusion": self.fusion, "encoder": self.encoder, **ids}

    def structure(self) -> dict:
        """Constructor arguments plus, per modality and layer, one frozen flag per expert (plain types)."""
        return {**copy.deepcopy(self.args), "experts": {m: side.structure() for m, side in self.sides.items()}}

    @classmethod
    def from_structure(cls, structure: dict) -> "XSMoE":
        """Rebuild the architecture of :meth:`structure`; then ``load_state_dict`` the weights."""
        args = {k: v for k, v in structure.items() if k != "experts"}
        start = ExpertStart(**{field: args.pop(key) for key, field in _START_KEYS.items() if key in args})
        model = cls(**args, expert_start=start)
        for m, frozen in structure.get("experts", {}).items():
            model.sides[m].set_structure(frozen)
        model.mark_trainable()
        return model


def missing_modality(variant: str, modalities) -> str | None:
    """The modality a one-modality variant (``visual``, ``textual``) reads when ``modalities`` lack it;
    None for every other variant, or when it is there. Checked on the model, and before a run or a
    sweep starts (``stream``, ``sweep_spec``)."""
    spec = VARIANTS.get(variant)
    needs = spec.modality if spec is not None else None
    return needs if needs is not None and needs not in modalities else None


def build_xsmoe(variant: str, *, text_dim: int | None, image_dim: int | None, n_groups: int, d_prime: int,
                embed_dim: int, max_len: int, seq_blocks: int, seq_heads: int, dropout: float,
                modalities: tuple[str, ...] = ("image", "text"), kd_weight: float = 1.0,
                feature_norm: str = "none", expert_start: ExpertStart = ExpertStart(),
                item_ids: bool = False, n_item_rows: int = 0, item_id_dropout: float = 0.0) -> XSMoE:
    """The model of a variant over the modalities the dataset has (``modalities``).

    Single-modality variants need their modality; every other variant uses all available ones
    (a text-only dataset runs them over text alone).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants: {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    sizes = {"image": image_dim, "text": text_dim}
    available = [m for m in MODALITIES if m in modalities]
    if missing_modality(variant, available):
        raise ValueError(f"variant {variant!r} needs the {spec.modality!r} modality, which this dataset "
                         f"does not have (modalities: {available})")
    used = [spec.modality] if spec.modality is not None else available
    if not used:
        raise ValueError(f"variant {variant!r}: no modality available (got {modalities})")
    missing = [m for m in used if not sizes[m]]
    if missing:
        raise ValueError(f"variant {variant!r}: no dimension given for {missing} (text_dim / image_dim)")
    return XSMoE(variant=variant, dims={m: int(sizes[m]) for m in used}, n_groups=n_groups, d_prime=d_prime,
                 embed_dim=embed_dim, max_len=max_len, seq_blocks=seq_blocks, seq_heads=seq_heads,
                 dropout=dropout, kd_weight=kd_weight, feature_norm=feature_norm, expert_start=expert_start,
                 item_ids=item_ids, n_item_rows=n_item_rows, item_id_dropout=item_id_dropout)
