#!/usr/bin/env bash
# Regenerates docs/RESULTS.md from the study roots of its "Commands" block (bench/results_header.md):
# the selection table (validation only), one section per study, the kept hand-written analysis.
#   bash bench/results_report.sh [STUDY_DIR]      # STUDY_DIR: where the roots are (default /work/study)
set -euo pipefail
S="${1:-/work/study}"
cd "$(dirname "$0")/.."
SEL=(
  "$S/sl_mean_layer_b256" "$S/sl_mean_none_b256" "$S/sl_mean_none_b64" "$S/once_mean_layer_b256" "$S/legacy_release"
  "$S/sel/guard_current" "$S/guard/ml1m_none" "$S/sel/guard_once" "$S/sel/guard_cls_none" "$S/guard/cls_layer"
  "$S/guard/b64" "$S/guard/legacy_release"
  "$S/sel/synth50_layer" "$S/synth50_none" "$S/synth50_legacy"
)
present=()
for root in "${SEL[@]}"; do [ -d "$root/runs" ] && present+=("$root"); done
python bench/study_report.py --header bench/results_header.md --out docs/RESULTS.md --selection "${present[@]}" \
  --section "MovieLens-1M, the ml1m preset now (model.feature_norm=none)=$S/sl_mean_none_b256" \
  --section "MovieLens-1M, batch 64 (train.batch_size=64)=$S/sl_mean_none_b64" \
  --section "MovieLens-1M, defaults of issue 18 (train.rows=sliding, feature_norm=layer)=$S/sl_mean_layer_b256" \
  --section "MovieLens-1M, the release before issue 10 emulated=$S/legacy_release" \
  --section "MovieLens-1M, train.rows=once (the 2026-12-01 rows, cap 50)=$S/once_mean_layer_b256" \
  --section "Guard sample (400 users): the paper's Table 1, 3 seeds=$S/table1_guard" \
  --section "synth_medium, epoch cap 50: the paper's Table 1=$S/synth50"
