#!/usr/bin/env bash
# spank.exports: spank_stasis.so exports only what Slurm looks up by name,
# plugin_* and slurm_spank_* (spank/spank_stasis.lds), and all of those it
# must. Anything else exported could bind to, or shadow, a symbol of
# slurmstepd, srun or another plugin loaded into the same process.
#   spank_exports.sh PLUGIN.so
set -euo pipefail
so=${1:?usage: spank_exports.sh PLUGIN.so}
command -v nm >/dev/null || { echo "SKIPPED: nm (binutils) is not installed"; exit 77; }

syms=$(nm -D --defined-only "$so" | awk 'NF >= 3 { print $3 }' | sed 's/@.*//' | sort -u)
status=0
extra=$(grep -Ev '^(plugin_[a-z_]+|slurm_spank_[a-z_]+)$' <<<"$syms" || true)
if [[ -n $extra ]]; then
  echo "$so exports symbols other than plugin_* and slurm_spank_*:" >&2
  sed 's/^/  /' <<<"$extra" >&2
  status=1
fi
for need in plugin_name plugin_type plugin_version slurm_spank_init slurm_spank_user_init \
  slurm_spank_task_init slurm_spank_task_exit slurm_spank_exit; do
  grep -qx "$need" <<<"$syms" || { echo "$so does not export $need" >&2; status=1; }
done
[[ $status -ne 0 ]] || echo "$so exports $(wc -l <<<"$syms") symbols, all plugin_* or slurm_spank_*"
exit $status
