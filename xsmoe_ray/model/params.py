"""Parameter accounting (XSMoE paper §4.5, Table 3).

Per modality, a side network of ``M`` layers with ``N`` experts each (width ``d``, bottleneck ``d'``).
The paper counts weights only::

    total     = M (2 N d d' + N d + d)          # N experts of 2dd', a router of d(N+1)
    trainable = M (2 d d' + N d + d)            # one trainable expert per layer + the router

This implementation also has biases: each expert ``d' + d`` (down and up projection), each router
``N + 1``. The exact counts are therefore::

    total     = M [ N (2 d d' + d' + d) + (N + 1)(d + 1) ]
    trainable = M [ T (2 d d' + d' + d) + (N + 1)(d + 1) ]

with ``T`` trainable experts per layer (1 in every variant while training; 0 right after a prune
removed the newest one). Sizes in MB are fp32 bytes / 2**20, as the paper's Table 3 (MP, TrP).
"""

from __future__ import annotations

from torch import nn

BYTES_PER_PARAM = 4  # fp32
MB = 2 ** 20


def paper_side_parameters(d: int, d_prime: int, n_layers: int, n_experts: int, trainable: bool = False) -> int:
    """The paper's §4.5 formula (weights only)."""
    experts = 1 if trainable else n_experts
    return n_layers * (2 * experts * d * d_prime + n_experts * d + d)


def side_parameters(d: int, d_prime: int, n_layers: int, n_experts: int, trainable: bool = False,
                    trainable_experts: int = 1) -> int:
    """Bias-inclusive count of one modality's side network (formula in the module docstring)."""
    experts = trainable_experts if trainable else n_experts
    return n_layers * (experts * (2 * d * d_prime + d_prime + d) + (n_experts + 1) * (d + 1))


def count_parameters(module: nn.Module) -> dict[str, float]:
    """Total and trainable parameter counts and their fp32 size in MB."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable,
            "total_mb": total * BYTES_PER_PARAM / MB, "trainable_mb": trainable * BYTES_PER_PARAM / MB}


def parameter_report(model: nn.Module) -> dict[str, dict[str, float]]:
    """Counts per component (``model.parameter_parts()``: for XSMoE the side network per modality, fusion,
    sequence encoder) and for the whole model.

    ``report["model"]["total_mb"]`` is Table 3's MP and ``["trainable_mb"]`` its TrP.
    """
    report = {name: count_parameters(part) for name, part in model.parameter_parts().items() if part is not model}
    report["model"] = count_parameters(model)
    return report


def format_report(report: dict[str, dict[str, float]]) -> str:
    """A markdown table like the paper's Table 3 (MP / TrP in MB) with the counts."""
    lines = ["| part | params | trainable | MP (MB) | TrP (MB) |", "|---|---:|---:|---:|---:|"]
    for name, r in report.items():
        lines.append(f"| {name} | {r['total']:,} | {r['trainable']:,} | {r['total_mb']:.2f} "
                     f"| {r['trainable_mb']:.2f} |")
    return "\n".join(lines)
