"""GAG (Qiu et al., SIGIR'20): a global-attributed graph network over each session, with a reservoir
and an uncertainty-sampled update set for streaming.

Per row, the context's distinct items are the nodes and consecutive clicks the directed,
count-weighted edges (``session_graph.SessionGraph``). With ``h_i = E[i]`` the node states and
``u = U[user]`` the user (the graph's global attribute), one GAG layer is

    x_i = [h_i ; u]
    m_in  = Â_inᵀ  (x W_in + b_in)       (messages along the edges, into each node)
    m_out = Â_out (x W_out + b_out)      (against the edges, into each node's predecessors)
    h'_i = tanh(W_o [m_in ; m_out] + b_o)

with ``Â_in``/``Â_out`` the in- and out-direction weights of ``SessionGraph.normalised``: an
edge's count over the distinct edges into its target (resp. out of its source), self-loops of
weight 1, ``D^-1/2 W D^-1/2``. Readout, with ``v_n`` the state of the last clicked item and
``c_i`` how often item ``i`` occurs in the session:

    α_i = w_1ᵀ σ(W_2 [v_n ; h'_i ; u]),   s_g = Σ_i c_i α_i h'_i
    s = W_5 [v_n ; s_g] + tanh(W_u u)      (the updated global attribute, the session vector)

Score ``s · E[j]``. Training: Eq. 8 (the project's in-batch debiased cross-entropy, like every
model here) at the row's last position instead of GAG's full softmax.

Streaming, as GAG's Algorithm: a reservoir (Vitter's R) of earlier windows' rows; each window after
the warm-up trains on an update set as large as its new rows: every new row with a user or an item
not trained before, then rows drawn without replacement from reservoir ∪ the other new rows with
probability ∝ ``exp(rank(d)/N)``, ``d`` the row's uncertainty (``replay.update_set``). GAG's paper
names the Wasserstein distance between the prediction and the truth; its public sampler calls
``scipy.stats.wasserstein_distance(softmax, one_hot)``, which reads both vectors as *samples of
values*, so the distance depends on the sorted probabilities only (in effect ``1 − max softmax``,
never on which item is the target). Here ``d`` is what the paper means: the Wasserstein-1 distance
between the predictive distribution and the one-hot target under the 0/1 metric on items, i.e.
``1 − p(target)`` (``session_model.SessionModel.informativeness``).

Departures, all to keep the stream's protocol the same for every model: the hidden size is
``model.embed_dim`` (GAG: 200); the reservoir holds ``model.replay_size`` rows (GAG: 1/100 of the
data); a window trains for the project's epochs with early stopping on validation (GAG: one pass
over the update set), with the project's optimizer and learning rate; ``v_n`` is the node of the
*last click* (GAG's code takes the node that appeared last, the paper the last click); the public
code keeps its GAG layers in a Python list, so they are never trained there: here they are.
Ids never trained keep their ``N(0, 0.02²)`` start (``id_table.py``); a session without a user
code reads a zero user vector.
"""

from __future__ import annotations

import torch
from torch import nn

from .session_graph import SessionGraph
from .session_model import SessionModel

VARIANTS = ("gag",)


class GAGLayer(nn.Module):
    """One global-attributed bi-directional graph convolution (module docstring)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w_in, self.w_out = nn.Linear(2 * dim, dim), nn.Linear(2 * dim, dim)
        self.w_o = nn.Linear(2 * dim, dim)

    def forward(self, a_in: torch.Tensor, a_out: torch.Tensor, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``a_in``/``a_out``: ``SessionGraph.normalised`` of each direction; ``h`` [B, L, D]; ``u`` [B, D]."""
        x = torch.cat([h, u.unsqueeze(1).expand_as(h)], dim=-1)  # [B, L, 2D]
        m_in = a_in.transpose(1, 2) @ self.w_in(x)
        m_out = a_out @ self.w_out(x)
        return torch.tanh(self.w_o(torch.cat([m_in, m_out], dim=-1)))


class GAG(SessionModel):
    VARIANTS = VARIANTS

    def __init__(self, *, variant: str, n_item_rows: int, n_user_rows: int, embed_dim: int, max_len: int,
                 layers: int = 1) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown GAG variant {variant!r}; one of {list(VARIANTS)}")
        self.variant = variant
        self.args = dict(variant=variant, n_item_rows=int(n_item_rows), n_user_rows=int(n_user_rows),
                         embed_dim=embed_dim, max_len=max_len, layers=layers)
        self._init_tables(n_item_rows, n_user_rows, embed_dim)
        self.layers = nn.ModuleList(GAGLayer(embed_dim) for _ in range(layers))
        self.attend = nn.Sequential(nn.Linear(3 * embed_dim, embed_dim), nn.Sigmoid(), nn.Linear(embed_dim, 1))
        self.readout = nn.Linear(2 * embed_dim, embed_dim)
        self.user_proj = nn.Linear(embed_dim, embed_dim)

    def _session(self, table: torch.Tensor, index: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        graph = SessionGraph.of(index)
        mask = graph.real.unsqueeze(-1).to(table.dtype)
        h = table[index.clamp_min(0)] * mask  # [B, L, D]; a position's state sits at its node
        u = users
        a_in, a_out = graph.normalised(incoming=True), graph.normalised(incoming=False)
        for layer in self.layers:
            h = layer(a_in, a_out, h, u) * graph.node.unsqueeze(-1).to(h.dtype)
            u = self._readout(graph, h, u, mask)
        return u

    def _readout(self, graph: SessionGraph, nodes: torch.Tensor, u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = graph.gather(nodes) * mask  # every click's item state: summing over clicks weights by c_i
        v_n = h[:, -1]  # the last click (contexts are left-padded)
        a = self.attend(torch.cat([v_n.unsqueeze(1).expand_as(h), h, u.unsqueeze(1).expand_as(h)], dim=-1))
        s_g = (a * h * mask).sum(dim=1)
        return self.readout(torch.cat([v_n, s_g], dim=-1)) + torch.tanh(self.user_proj(u))

    def parameter_parts(self) -> dict[str, nn.Module]:
        return {"item_table": self.item_table, "user_table": self.user_table, "layers": self.layers,
                "readout": nn.ModuleList([self.attend, self.readout, self.user_proj])}
