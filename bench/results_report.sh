#!/usr/bin/env bash
# Regenerates docs/RESULTS.md from the committed record docs/studies (bench/study_archive.py): first
# the finished runs of the live roots under STUDY_DIR are copied in, then every table is built from the
# record, so the report regenerates on any checkout. Sections whose runs were never archived (the
# studies before 2026-12-04) are kept word for word; the hand-written analysis is kept.
#   bash bench/results_report.sh [STUDY_DIR]      # STUDY_DIR: where the live roots are (default /work/study)
set -euo pipefail
S="${1:-/work/study}"
cd "$(dirname "$0")/.."
A=docs/studies
# live root[:name in the record]; a root not on this machine leaves its record as it is
python bench/study_archive.py --from "$S" --into "$A" \
  sl_mean_none_b256:ml1m_preset synth50:synth50_table1 synth50_legacy synth50_none table1_guard guard/ml1m_none \
  guard/legacy_release guard/tau15_none guard/item_ids ml1m_item_ids guard/ids_drop20 guard/ids_drop50 \
  guard_rh_ids:guard/rh_item_ids guard_rh:guard/rh guard/init_last guard/copy90 guard/tau15_last ml1m_last \
  ml1m_tau15 synth50_last synth50_ids synth50_ids_drop20
KEPT=(
  "Choosing settings (validation only)"
  "MovieLens-1M, the ml1m preset now (model.feature_norm=none)"
  "MovieLens-1M, batch 64 (train.batch_size=64)"
  "MovieLens-1M, defaults of issue 18 (train.rows=sliding, feature_norm=layer)"
  "MovieLens-1M, the release before issue 10 emulated"
  "MovieLens-1M, train.rows=once (the 2026-12-01 rows, cap 50)"
  "Guard sample (400 users): the paper's Table 1, 3 seeds"
  "synth_medium, epoch cap 50: the paper's Table 1"
)
args=()
for name in "${KEPT[@]}"; do args+=(--kept "$name"); done
SECTIONS=(
  "MovieLens-1M, the ml1m preset: runs on record=$A/ml1m_preset"
  "synth_medium, epoch cap 50, the paper's Table 1: runs on record=$A/synth50_table1"
  "synth_medium, the release before issue 10 emulated: runs on record=$A/synth50_legacy"
  "synth_medium, raw states (model.feature_norm=none): runs on record=$A/synth50_none"
  "MovieLens-1M, an item-ID table beside the content embedding (model.item_ids): runs on record=$A/ml1m_item_ids"
  "MovieLens-1M, the new expert as a copy of the newest (model.new_expert_init=last): runs on record=$A/ml1m_last"
  "MovieLens-1M, pruning at τ = 0.15 (model.tau=0.15): runs on record=$A/ml1m_tau15"
  "synth_medium, the new expert as a copy of the newest (model.new_expert_init=last): runs on record=$A/synth50_last"
  "synth_medium, an item-ID table beside the content embedding (model.item_ids): runs on record=$A/synth50_ids"
  "synth_medium, the item-ID table with ID dropout 0.2 (model.item_id_dropout=0.2): runs on record=$A/synth50_ids_drop20"
  "Guard sample (400 users), the paper's Table 1: runs on record=$A/table1_guard"
)
# every root on record, full runs and guard labels alike, in the validation-only table
SEL=()
for root in "$A"/ml1m_preset "$A"/ml1m_item_ids "$A"/ml1m_last "$A"/ml1m_tau15 "$A"/guard/* "$A"/synth50_table1 "$A"/synth50_legacy "$A"/synth50_none "$A"/synth50_last "$A"/synth50_ids "$A"/synth50_ids_drop20; do [ -d "$root/runs" ] && SEL+=("$root"); done
[ ${#SEL[@]} -gt 0 ] && args+=(--selection-title "Choosing settings, runs on record (validation only)" --selection "${SEL[@]}")
for spec in "${SECTIONS[@]}"; do
  [ -d "${spec##*=}/runs" ] && args+=(--section "$spec")
done
python bench/study_report.py --header bench/results_header.md --out docs/RESULTS.md "${args[@]}"
