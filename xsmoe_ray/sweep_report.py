"""Sweep outputs: the table of all trials, the best config per dataset, the τ-sensitivity plot
(paper Figure 2) and the efficiency table (paper Table 3).

Input is one :class:`TrialRecord` per trial: its searched values and the rows it reported, one per
window, as the window loop reports them (``xsmoe_ray.train.worker``). A trial is *complete* when it
reported every window, *stopped* when ASHA ended it early, *unfinished* when the sweep was interrupted
before it ended (re-running the same command resumes it), *error* when it failed. Test averages are
over a trial's test windows (D_2 … D_T), as in the paper's AVG column; the val average (the default
sweep metric, ``mean_val_ndcg10``) is over every window's best val NDCG@10, warm-up included. A
stopped trial's averages cover fewer, earlier windows and are not comparable, so the best config,
the τ plot and the efficiency table use complete trials only, and the all-trials table shows every
trial with its status. The best config is chosen on the sweep's metric; its test AVG is shown beside
it, labelled as not used for the choice (or, for a test metric, as test-set selection).

Files written under the sweep's ``run.out``: ``trials.csv`` (one row per trial), ``sweep.md``
(all trials, best per dataset, efficiency), ``best/<dataset>.yaml`` (the best trial's whole config,
runnable with ``python -m xsmoe_ray.stream --config``) and, when the sweep searches τ,
``tau_sensitivity.png``.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402

from xsmoe_ray.report import dedupe_windows  # noqa: E402
from xsmoe_ray.sweep_spec import is_test_metric  # noqa: E402

LABELS = {"model.tau": "τ", "model.d_prime": "d′", "model.layers_per_group": "layers/group",
          "model.variant": "variant", "run.seed": "seed"}
# Sweep metric -> the window-row column a trial's average of it is computed from (see TrialRecord.avg).
METRIC_COLUMN = {"mean_val_ndcg10": "val_ndcg10", "mean_test_ndcg10": "ndcg10", "mean_test_hr10": "hr10"}
STATUSES = ("complete", "stopped", "unfinished", "error")  # also the all-trials table's order
STATUS_TEXT = {"complete": "complete", "stopped": "stopped early (ASHA)",
               "unfinished": "unfinished (interrupted; run the same command again to resume)", "error": "failed"}
REASON_CHARS = 300  # a failure reason longer than this is cut: a table cell, not a log
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The line Python's traceback ends with: the exception's (dotted) type name, then its message.
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception|Exit|Interrupt|Failure)(?::|$)")


@dataclass
class TrialRecord:
    """One trial of one dataset: what it searched and what it reported."""

    dataset: str
    trial: str
    params: dict[str, Any]  # dotted config key -> value, searched keys only
    status: str  # one of STATUSES
    windows: list[dict] = field(default_factory=list)  # reported rows, one per window, in order
    wall_s: float = 0.0  # Tune's time_total_s for the trial
    error: str = ""  # the whole error text, traceback included; see error_reason

    @property
    def reason(self) -> str:
        return error_reason(self.error)

    @property
    def tests(self) -> list[dict]:
        return [r for r in self.windows if r.get("ndcg10") is not None]

    def avg(self, column: str) -> float | None:
        """Mean of a test column over the test windows; of a val column over every window, warm-up
        included (the warm-up has a val split too), as the window loop's ``mean_val_ndcg10``."""
        rows = self.windows if column.startswith("val_") else self.tests
        values = [float(r[column]) for r in rows if r.get(column) is not None]
        return sum(values) / len(values) if values else None

    def last(self, column: str) -> Any:
        return self.windows[-1].get(column) if self.windows else None

    @property
    def train_seconds(self) -> float:
        """Table 3's TT: training time summed over windows (evaluation of the test chunk excluded)."""
        return sum(float(r.get("seconds", 0.0)) for r in self.windows)

    @property
    def epochs(self) -> int:
        return sum(int(r.get("epochs", 0)) for r in self.windows)

    @property
    def peak_mem_mb(self) -> float | None:
        values = [r["peak_mem_mb"] for r in self.windows if r.get("peak_mem_mb") is not None]
        return max(values) if values else None


def error_reason(text: str) -> str:
    """A failed trial's reason, one line: the exception's own message, not Ray's header.

    Ray's ``RayTaskError`` text starts with a colour-coded ``ray::ImplicitFunc.train()`` header and
    ends, like any traceback, with ``Type: message`` (the message's own further lines after it)."""
    lines = [line.rstrip() for line in ANSI_CODE.sub("", text).splitlines() if line.strip()]
    if not lines:
        return ""
    starts = [i for i, line in enumerate(lines) if EXCEPTION_LINE.match(line)]
    reason = " ".join(line.strip() for line in lines[starts[-1]:]) if starts else lines[-1].strip()
    return reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "…"


def record_rows(rows: list[dict]) -> list[dict]:
    """Reported rows → one per window, a re-run window's later row replacing the earlier."""
    return dedupe_windows([r for r in rows if "window" in r])


def label(key: str) -> str:
    return LABELS.get(key, key)


def param_keys(records: list[TrialRecord]) -> list[str]:
    return sorted({k for r in records for k in r.params})


def experts_text(experts: dict | None) -> str:
    if not experts:
        return ""
    return " ".join(f"{m}:{'/'.join(str(n) for n in per_layer)}" for m, per_layer in sorted(experts.items()))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


# ---------------------------------------------------------------------------------------------
# Tables.


def trials_csv(records: list[TrialRecord]) -> str:
    keys = param_keys(records)
    fields = ["dataset", "trial", "status", "windows", *keys, "val_ndcg10_avg", "hr10_avg", "ndcg10_avg", "mp_mb",
              "trp_mb",
              "experts", "tt_s", "et_s", "wall_s", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")  # the csv default, CRLF, shows as ^M on Unix
    w.writeheader()
    for r in records:
        w.writerow({"dataset": r.dataset, "trial": r.trial, "status": r.status, "windows": len(r.windows),
                    **{k: r.params.get(k, "") for k in keys}, "val_ndcg10_avg": r.avg("val_ndcg10"),
                    "hr10_avg": r.avg("hr10"), "ndcg10_avg": r.avg("ndcg10"),
                    "mp_mb": r.last("mp_mb"), "trp_mb": r.last("trp_mb"), "experts": experts_text(r.last("experts")),
                    "tt_s": round(r.train_seconds, 2), "et_s": round(r.train_seconds / max(r.epochs, 1), 3),
                    "wall_s": round(r.wall_s, 1), "error": r.reason})
    return buf.getvalue()


def _sorted(records: list[TrialRecord], metric: str) -> list[TrialRecord]:
    """By dataset (first-seen order), then status in STATUSES order, then metric."""
    order = {d: i for i, d in enumerate(dict.fromkeys(r.dataset for r in records))}
    rank = {s: i for i, s in enumerate(STATUSES)}
    column = METRIC_COLUMN[metric]
    return sorted(records, key=lambda r: (order[r.dataset], rank.get(r.status, len(STATUSES)),
                                          -(r.avg(column) or 0.0), r.trial))


def trials_markdown(records: list[TrialRecord], metric: str) -> str:
    keys = param_keys(records)
    head = ["dataset", "trial", "status", "windows", *[label(k) for k in keys], "val NDCG@10 AVG", "test HR@10 AVG",
            "test NDCG@10 AVG", "MP (MB)", "TrP (MB)", "experts", "TT (s)", "wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * len(keys) + "---:|" * 5 + "---|---:|---:|"]
    for r in _sorted(records, metric):
        cells = [r.dataset, r.trial, r.status, str(len(r.windows)), *[str(r.params.get(k, "")) for k in keys],
                 _pct(r.avg("val_ndcg10")), _pct(r.avg("hr10")), _pct(r.avg("ndcg10")), _num(r.last("mp_mb")),
                 _num(r.last("trp_mb")),
                 experts_text(r.last("experts")), f"{r.train_seconds:.1f}", f"{r.wall_s:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_per_dataset(records: list[TrialRecord], metric: str) -> dict[str, TrialRecord]:
    """Per dataset, the complete trial with the highest metric (ties: lowest trial id)."""
    column = METRIC_COLUMN[metric]
    best: dict[str, TrialRecord] = {}
    for r in sorted(records, key=lambda r: r.trial):
        if r.status != "complete" or r.avg(column) is None:
            continue
        if r.dataset not in best or r.avg(column) > best[r.dataset].avg(column):
            best[r.dataset] = r
    return best


def selection_note(metric: str) -> str:
    """How the best trial was chosen, and what its test figures mean for it."""
    if is_test_metric(metric):
        return f"chosen on test ({metric}): test-set selection, its test figures are optimistic"
    return f"chosen on val ({metric}); test shown, not used"


def best_summary(r: TrialRecord, metric: str) -> str:
    """One line for the chosen trial: the figure it was chosen on, then its test AVG, labelled."""
    return (f"trial {r.trial}: {metric} {_pct(r.avg(METRIC_COLUMN[metric]))}%, test AVG NDCG@10 "
            f"{_pct(r.avg('ndcg10'))}% HR@10 {_pct(r.avg('hr10'))}% ({selection_note(metric)})")


def best_markdown(best: dict[str, TrialRecord], datasets: list[str], metric: str) -> str:
    lines = [f"Best complete trial per dataset by {metric}: {selection_note(metric)}. Val: mean of each window's "
             "best val NDCG@10 (warm-up included); test: mean over the trial's test windows.", "",
             f"| dataset | trial | config | {metric} (selection) | test HR@10 AVG | test NDCG@10 AVG | config file |",
             "|---|---|---|---:|---:|---:|---|"]
    for d in datasets:
        r = best.get(d)
        if r is None:
            lines.append(f"| {d} | — | no complete trial | n/a | n/a | n/a | — |")
            continue
        config = ", ".join(f"{label(k)}={v}" for k, v in sorted(r.params.items()))
        lines.append(f"| {d} | {r.trial} | {config} | {_pct(r.avg(METRIC_COLUMN[metric]))} | {_pct(r.avg('hr10'))} | "
                     f"{_pct(r.avg('ndcg10'))} | best/{d}.yaml |")
    return "\n".join(lines)


def efficiency_markdown(records: list[TrialRecord]) -> str:
    """Paper Table 3: MP and TrP after the last window, peak GPU memory, TT and ET, per complete trial."""
    lines = ["| Dataset | Variant | MP (MB) | TrP (MB) | Memory (MB) | TT (s) | ET (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    done = sorted((r for r in records if r.status == "complete"), key=_table3_order)
    for r in done:
        tau = r.params.get("model.tau")
        rest = ", ".join(f"{label(k)}={v}" for k, v in sorted(r.params.items()) if k != "model.tau")
        variant = (f"τ = {tau}" if tau is not None else "") + (f" ({rest})" if rest else "")
        lines.append(f"| {r.dataset} | {variant.strip() or r.trial} | {_num(r.last('mp_mb'))} | "
                     f"{_num(r.last('trp_mb'))} | {_num(r.peak_mem_mb, '.0f')} | {r.train_seconds:.1f} | "
                     f"{r.train_seconds / max(r.epochs, 1):.2f} |")
    if not done:
        lines.append("| — | no complete trial | | | | | |")
    return "\n".join(lines)


def _table3_order(r: TrialRecord) -> tuple:
    """Dataset, then the other searched settings, then τ ascending: Table 3's row order."""
    def value(v: Any) -> tuple:
        return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))

    rest = tuple(value(v) for k, v in sorted(r.params.items()) if k != "model.tau")
    return r.dataset, rest, value(r.params.get("model.tau", 0.0))


def status_counts(records: list[TrialRecord]) -> str:
    """``N trials: a complete, …, d failed.``; stopped and unfinished only when there are some, so a
    sweep without ASHA never mentions it."""
    counts = {s: sum(r.status == s for r in records) for s in STATUSES}
    parts = [f"{counts[s]} {STATUS_TEXT[s]}" for s in STATUSES if counts[s] or s in ("complete", "error")]
    return f"{len(records)} trials: " + ", ".join(parts) + "."


def failures_markdown(records: list[TrialRecord], metric: str) -> list[str]:
    """The failed trials' reasons (empty when none failed): without them sweep.md says only "error"."""
    failed = [r for r in _sorted(records, metric) if r.status == "error"]
    if not failed:
        return []
    lines = ["## Failed trials", "", "Each failed trial's exception; the whole traceback is in "
             "`ray/<dataset>/trial_<trial>/error.txt` under this directory.", ""]
    for r in failed:
        config = ", ".join(f"{label(k)}={v}" for k, v in sorted(r.params.items()))
        lines.append(f"- {r.dataset} {r.trial}" + (f" ({config})" if config else "") + f": {r.reason or 'no message'}")
    return lines + [""]


def tau_searched(records: list[TrialRecord]) -> bool:
    """Whether the trials differ in τ: with one τ the sensitivity plot would be a single point."""
    return len({r.params["model.tau"] for r in records if "model.tau" in r.params}) > 1


def tau_markdown(records: list[TrialRecord]) -> list[str]:
    if not tau_searched(records):
        return []
    return ["## τ sensitivity", "", "![τ sensitivity](tau_sensitivity.png)", "",
            "Per τ: mean over the complete trials at that τ (other searched settings pooled); bars span their "
            "min–max.", ""]


def sweep_markdown(name: str, records: list[TrialRecord], datasets: list[str], metric: str) -> str:
    best = best_per_dataset(records, metric)
    return "\n".join([
        f"# Sweep {name}", "",
        f"{status_counts(records)} Metrics in % (full ranking): val = mean of each window's best val NDCG@10 "
        "(warm-up included), test = mean over each trial's test windows. Trials are ranked and the best "
        f"chosen by {metric} ({selection_note(metric)}).", "",
        "## All trials", "", trials_markdown(records, metric), "",
        *failures_markdown(records, metric),
        "## Best config per dataset", "", best_markdown(best, datasets, metric), "",
        *tau_markdown(records),
        "## Efficiency (paper Table 3 shape)", "",
        "MP/TrP: all/trainable parameters after the last window, fp32 MB. Memory: peak GPU memory "
        "(n/a on CPU). TT: training time summed over windows. ET: TT per epoch.", "",
        efficiency_markdown(records), ""])


# ---------------------------------------------------------------------------------------------
# τ sensitivity (paper Figure 2: HR@10 and NDCG@10 against τ, one panel per dataset).


def tau_points(records: list[TrialRecord], dataset: str, column: str) -> list[tuple[float, float, float, float]]:
    """(τ, mean, min, max) of ``column``'s trial average over the dataset's complete trials, by τ."""
    by_tau: dict[float, list[float]] = {}
    for r in records:
        if r.dataset == dataset and r.status == "complete" and r.avg(column) is not None:
            by_tau.setdefault(float(r.params.get("model.tau", math.nan)), []).append(100 * r.avg(column))
    return [(t, sum(v) / len(v), min(v), max(v)) for t, v in sorted(by_tau.items())]


def tau_plot(records: list[TrialRecord], datasets: list[str], default_tau: dict[str, float]) -> bytes:
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        plotted = False
        for column, name, marker in (("hr10", "HR@10", "o"), ("ndcg10", "NDCG@10", "s")):
            points = [(default_tau[d] if math.isnan(t) else t, m, lo, hi)
                      for t, m, lo, hi in tau_points(records, d, column)]
            if not points:
                continue
            x, mean = [p[0] for p in points], [p[1] for p in points]
            err = [[m - p[2] for m, p in zip(mean, points)], [p[3] - m for m, p in zip(mean, points)]]
            ax.errorbar(x, mean, yerr=err, marker=marker, capsize=3, label=name)
            plotted = True
        if not plotted:
            ax.text(0.5, 0.5, "no complete trial", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(d)
        ax.set_xlabel("τ")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        if plotted:
            ax.legend(fontsize=8)
    fig.suptitle("Sensitivity to the pruning threshold τ")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def write_sweep_outputs(out: Path, name: str, records: list[TrialRecord], datasets: list[str], metric: str,
                        default_tau: dict[str, float]) -> dict[str, TrialRecord]:
    """Write every output file but the best configs (the caller owns configs); returns the best trials."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.csv").write_text(trials_csv(_sorted(records, metric)))
    (out / "sweep.md").write_text(sweep_markdown(name, records, datasets, metric))
    plot = out / "tau_sensitivity.png"
    if tau_searched(records):
        plot.write_bytes(tau_plot(records, datasets, default_tau))
    else:
        plot.unlink(missing_ok=True)  # one written by an older version, which drew it for any sweep
    return best_per_dataset(records, metric)
