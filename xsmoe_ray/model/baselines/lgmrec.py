"""LGMRec (Guo et al., AAAI'24): local graph embeddings (LightGCN over user-item ids, plus one
graph embedding per modality from frozen features) and a global hypergraph embedding, scored by
user · item. Not sequential: the user is their graph node, not their last items.

Graph: the bipartite user-item graph of the (user, item) pairs of the rows a window trains on,
every position of a row (its context, from any chunk, and its target); ``_rh`` adds the reservoir's
rows. ``Â = D^-1/2 A D^-1/2`` (no self-loops), rebuilt at each window start
(:meth:`set_window_rows`) and kept with the checkpoint, so a restored model scores as trained.
With ``E⁰ = [E_u; E_i]`` the id tables, ``F_m`` the frozen last-layer states of modality ``m``
(what ``noft`` reads; the cache holds pooled states) and ``R`` the user-item matrix:

    E_cge = mean(E⁰, ÂE⁰, …, Â^K E⁰)                                   (LightGCN, K = 2)
    E^m = Â^2 [ R̄ F_m W_m ; F_m W_m ],  R̄ = R row-normalised           (modality graph embeddings)
    H_i^m = GumbelSoftmax_τ(F_m V_m),  H_u^m = GumbelSoftmax_τ(R F_m V_m)   (A = 4 hyperedges, τ = 0.2)
    Λ^m = H_i^mᵀ E_cge,i,   E_ghe = Σ_m [H_u^m Λ^m ; H_i^m Λ^m]         (global hypergraph, one layer)
    E = E_cge + Σ_m normalize(E^m) + α normalize(E_ghe),   α = 0.3

Loss: Eq. 8 (the project's in-batch debiased cross-entropy, like every model here) between each
row's user and its last target, instead of LGMRec's BPR with one sampled negative; plus LGMRec's
``cl_weight`` × the InfoNCE between two modalities' hypergraph embeddings (τ = 0.2, summed over the
batch's users and targets; it needs two modalities, so text-only data has none) and
``reg_weight`` × the batch embeddings' norms. Hyperparameters are LGMRec's "baby" configuration
(the MMRec default): K = 2 LightGCN and 2 modality layers, one hypergraph layer, 4 hyperedges,
keep rate 0.5 (dropout on the assignments while training), α 0.3, cl 1e-4, reg 1e-6.

Departures: the loss above; the hidden size is ``model.embed_dim`` (LGMRec: 64); evaluation uses
the noise-free assignments ``softmax(logits / τ)`` (LGMRec draws Gumbel noise at test time too,
so its evaluation is random); the graph is the window's rows, since the model is trained window
by window like every model here. Variants: ``lgmrec`` (fine-tuned per window), ``lgmrec_rh``
(reservoir replay in batches and graph), ``lgmrec_kd`` (KL to the previous window's model).
Ids never trained keep their ``N(0, 0.02²)`` start (``id_table.py``), and so does a user outside
the window's graph: a test user the window's rows do not hold is scored from their id row alone
(plus the empty-graph terms), whatever their context says: that is what a non-sequential model
can do, and the cold-user share shows in the warm/cold columns of results.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..base import SequentialModel
from ..loss import batch_candidates
from .frozen_features import LastLayerFeatures
from ..id_table import IdTable, match_catalogue

VARIANTS = {"lgmrec": {}, "lgmrec_rh": {"replay": True}, "lgmrec_kd": {"distill": True}}
DEFAULTS = dict(ui_layers=2, mm_layers=2, hyper_layers=1, hyperedges=4, keep_rate=0.5, alpha=0.3,
                cl_weight=1e-4, reg_weight=1e-6, tau=0.2)


def _normalised_adjacency(edges: torch.Tensor, n_users: int, n_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``edges`` [2, E] (user row, item id) → sparse ``Â`` [N, N] and the user-item mean ``R̄`` [U, I]."""
    u, i = edges[0], edges[1] + n_users
    rows, cols = torch.cat([u, i]), torch.cat([i, u])
    deg = torch.bincount(rows, minlength=n_nodes).float()
    inv_sqrt = (deg + 1e-7).pow(-0.5)
    adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), inv_sqrt[rows] * inv_sqrt[cols], (n_nodes, n_nodes),
                                  check_invariants=True)
    n_items = n_nodes - n_users
    mean = torch.sparse_coo_tensor(edges, 1.0 / (deg[edges[0]] + 1e-7), (n_users, n_items), check_invariants=True)
    return adj.coalesce(), mean.coalesce()


class LGMRec(LastLayerFeatures, SequentialModel):
    VARIANTS = tuple(VARIANTS)
    last_position_only = True
    reads_context = False  # not sequential: the user vector is the user's row of the graph embedding

    def __init__(self, *, variant: str, n_item_rows: int, n_user_rows: int, dims: dict[str, int], embed_dim: int,
                 max_len: int, kd_weight: float = 1.0, **hyper) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown LGMRec variant {variant!r}; one of {sorted(VARIANTS)}")
        unknown = set(hyper) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown LGMRec settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        self.variant, self.modalities = variant, tuple(sorted(dims))
        self.h = {**DEFAULTS, **hyper}
        self.args = dict(variant=variant, n_item_rows=int(n_item_rows), n_user_rows=int(n_user_rows),
                         dims={m: int(d) for m, d in dims.items()}, embed_dim=embed_dim, max_len=max_len,
                         kd_weight=kd_weight, **hyper)
        self.item_table = IdTable(n_item_rows, embed_dim, std=0.02)
        self.user_table = IdTable(n_user_rows, embed_dim, std=0.02)
        self.project = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(dims[m], embed_dim)))
                                         for m in self.modalities})
        self.hyper = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_uniform_(torch.empty(dims[m], self.h["hyperedges"])))
                                       for m in self.modalities})
        self.drop = nn.Dropout(1.0 - self.h["keep_rate"])
        self.max_len, self.kd_weight, self.distill = max_len, kd_weight, bool(VARIANTS[variant].get("distill"))
        self.register_buffer("edges", torch.zeros(2, 0, dtype=torch.long))  # (user row, item id) of the graph
        self._register_feature_buffers()
        self.__dict__["_graph"] = None  # (Â, R̄, user degrees), built from ``edges`` when first needed
        self.__dict__["_frozen"] = None  # the propagation in eval mode (weights do not change there)
        self.__dict__["_aux"] = None

    @property
    def replay(self) -> bool:
        return bool(VARIANTS[self.variant].get("replay"))

    # ---- inputs --------------------------------------------------------------------------------------
    def set_item_features(self, features: dict[str, torch.Tensor]) -> None:
        """Keeps each modality's last cached layer ``[n_items+1, d]``; grows the id table with the catalogue."""
        self._keep_last_layers(features, self.item_table.weight.device)
        if int(next(iter(features.values())).shape[0]) != self.item_table.rows:
            match_catalogue(self, features)
            self._forget()

    def set_user_count(self, n_users: int) -> None:
        if n_users + 1 != self.user_table.rows:
            self.user_table.grow(n_users + 1)
            self.args["n_user_rows"] = n_users + 1
            self.__dict__["teacher"] = None
            self._forget()

    def set_window_rows(self, rows: np.ndarray, replayed: np.ndarray | None = None) -> None:
        """The graph of the (user, item) pairs at every position of ``rows`` [N, L+3] and of the
        replayed rows (module docstring)."""
        if replayed is not None and len(replayed):
            rows = np.concatenate([rows, replayed])
        items = rows[:, :-2]
        users = np.broadcast_to(rows[:, -1:] + 1, items.shape)
        keep = (items > 0) & (users > 0)
        pairs = np.unique(np.stack([users[keep], items[keep]]), axis=1)
        self.edges = torch.from_numpy(pairs.astype(np.int64)).to(self.item_table.weight.device)
        self._forget()

    @property
    def _ddp_params_and_buffers_to_ignore(self) -> list[str]:
        return ["edges"] + LastLayerFeatures._ddp_params_and_buffers_to_ignore.fget(self)

    @property
    def n_item_rows(self) -> int:
        return self.item_table.rows

    # ---- propagation -----------------------------------------------------------------------------------
    def _forget(self) -> None:
        self.__dict__["_graph"] = None
        self.__dict__["_frozen"] = None

    def train(self, mode: bool = True):
        self.__dict__["_frozen"] = None
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "edges" in state_dict:
            self.edges = torch.empty_like(state_dict["edges"], device=self.item_table.weight.device)
        self._forget()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _adjacency(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Â``, ``R̄`` and each user's item count, built once per graph."""
        if self._graph is None:
            n_users = self.user_table.rows
            adj, mean = _normalised_adjacency(self.edges, n_users, n_users + self.item_table.rows)
            self.__dict__["_graph"] = (adj, mean, self._degrees(mean))
        return self._graph

    def _assign(self, logits: torch.Tensor) -> torch.Tensor:
        tau = self.h["tau"]
        if self.training:
            return self.drop(F.gumbel_softmax(logits, tau=tau, dim=1, hard=False))
        return torch.softmax(logits / tau, dim=1)

    def _propagate(self, inputs: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Final user and item embeddings ``[U, D]``, ``[I, D]`` and the per-modality hypergraph parts;
        ``inputs``: the features (a teacher reads its student's, as it holds none of its own)."""
        if not self.training and self._frozen is not None:
            return self._frozen
        with torch.autocast(self.item_table.weight.device.type, enabled=False):  # sparse part in float32
            out = self._propagate_fp32(inputs if inputs is not None else self._item_inputs())
        if not self.training:
            self.__dict__["_frozen"] = out
        return out

    def _propagate_fp32(self, inputs: dict[str, torch.Tensor]):
        adj, mean, degrees = self._adjacency()
        n_users = self.user_table.rows
        ego = torch.cat([self.user_table.weight, self.item_table.weight]).float()
        layers, x = [ego], ego
        for _ in range(self.h["ui_layers"]):
            x = torch.sparse.mm(adj, x)
            layers.append(x)
        cge = torch.stack(layers).mean(dim=0)
        total, ghe, hyper_parts = cge, torch.zeros_like(cge), {}
        for m in self.modalities:
            feats = inputs[m].float()
            item_m = feats @ self.project[m]
            x = torch.cat([torch.sparse.mm(mean, item_m), item_m])
            for _ in range(self.h["mm_layers"]):
                x = torch.sparse.mm(adj, x)
            total = total + F.normalize(x, dim=1)
            item_logits = feats @ self.hyper[m]
            h_i = self._assign(item_logits)
            h_u = self._assign(torch.sparse.mm(mean, item_logits) * degrees)
            item_g = cge[n_users:]
            for _ in range(self.h["hyper_layers"]):
                hyperedges = h_i.T @ item_g
                item_g = h_i @ hyperedges
            user_g = h_u @ hyperedges
            hyper_parts[m] = (user_g, item_g)
            ghe = ghe + torch.cat([user_g, item_g])
        final = total + self.h["alpha"] * F.normalize(ghe, dim=1) if self.modalities else total
        return final[:n_users], final[n_users:], hyper_parts

    @staticmethod
    def _degrees(mean: torch.Tensor) -> torch.Tensor:
        """Each user's item count ``[U, 1]``: ``R F V`` is a sum over the user's items, ``R̄`` a mean."""
        counts = torch.zeros(mean.shape[0], device=mean.device)
        counts.index_add_(0, mean.indices()[0], torch.ones(mean.indices().shape[1], device=mean.device))
        return counts.unsqueeze(1)

    # ---- towers --------------------------------------------------------------------------------------
    def _user_rows(self, users: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if users is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        rows = users.to(device=device, dtype=torch.long) + 1
        if rows.numel() and int(rows.max()) >= self.user_table.rows:
            raise ValueError(f"user code {int(rows.max()) - 1} is past this model's {self.user_table.rows - 1} users")
        return rows.clamp_min(0)

    def _embed(self, item_ids: torch.Tensor, inputs) -> torch.Tensor:
        return self._propagate(inputs)[1][item_ids]

    def _towers(self, seq: torch.Tensor, inputs, users: torch.Tensor | None = None):
        ids, index = batch_candidates(seq)
        user_emb, item_emb, hyper_parts = self._propagate(inputs)
        rows = self._user_rows(users, seq.shape[0], item_emb.device)
        states = torch.zeros(seq.shape[0], seq.shape[1] - 1, item_emb.shape[1], device=item_emb.device,
                             dtype=user_emb.dtype)
        states[:, -1] = user_emb[rows]
        self.__dict__["_aux"] = (rows, seq[:, -1], user_emb[rows], item_emb[seq[:, -1]], hyper_parts)
        return ids, index, item_emb[ids], states

    def _auxiliary_loss(self) -> torch.Tensor | None:
        """LGMRec's hypergraph contrastive term and embedding norm (module docstring)."""
        if self._aux is None:
            return None
        rows, targets, users, items, parts = self._aux
        self.__dict__["_aux"] = None
        reg = (users.norm() + items.norm()) / max(len(rows), 1)
        loss = self.h["reg_weight"] * reg
        if len(parts) >= 2:
            (u1, i1), (u2, i2) = (parts[m] for m in self.modalities[:2])
            loss = loss + self.h["cl_weight"] * (_info_nce(u1[rows], u2[rows], u2, self.h["tau"])
                                                 + _info_nce(i1[targets], i2[targets], i2, self.h["tau"]))
        return loss

    def user_states(self, seq_ids: torch.Tensor, known: tuple[torch.Tensor, torch.Tensor] | None = None,
                    users: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L, D]``: the users' graph embeddings at the last position, zeros before it; the
        context is not read (module docstring)."""
        user_emb = self._propagate()[0]
        states = torch.zeros(*seq_ids.shape, user_emb.shape[1], device=user_emb.device, dtype=user_emb.dtype)
        states[:, -1] = user_emb[self._user_rows(users, seq_ids.shape[0], user_emb.device)]
        return states

    # ---- structure -----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def parameter_parts(self) -> dict[str, nn.Module]:
        return {"item_table": self.item_table, "user_table": self.user_table, "project": self.project,
                "hyper": self.hyper}

    def structure(self) -> dict:
        return {**self.args, "dims": dict(self.args["dims"])}

    @classmethod
    def from_structure(cls, structure: dict) -> "LGMRec":
        return cls(**structure)


def _info_nce(a: torch.Tensor, b: torch.Tensor, everyone: torch.Tensor, tau: float) -> torch.Tensor:
    """``-Σ_k log softmax_j(cos(a_k, everyone_j)/τ)[k's own b]`` (LGMRec's ``ssl_triple_loss``)."""
    a, b, everyone = F.normalize(a, dim=1), F.normalize(b, dim=1), F.normalize(everyone, dim=1)
    positive = (a * b).sum(dim=1) / tau
    return -(positive - torch.logsumexp(a @ everyone.T / tau, dim=1)).sum()
