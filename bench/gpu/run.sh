#!/usr/bin/env bash
# Cases 3-5 of kiln-bench (CLIP, VQGAN+CLIP, DALL·E) on a CUDA machine, with
# their PyTorch baselines, in one run of under ten minutes.
#
#   bench/gpu/run.sh [OUT_DIR]        (default bench/gpu/out)
#
# Needs there only:
# - bench/gpu/bin/kiln-bench: the stripped binary (bench/gpu/prepare.sh,
#   or KILN_BENCH_BIN=path);
# - a python3 with PyTorch 2.11 on CUDA (KILN_BENCH_PYTHON to choose another);
# - bench/gpu/wheels/*.whl: the Python packages that Python lacks
#   (prepare.sh fetches min-dalle, emoji and taming-transformers);
#   installed into a private folder, never into the system's Python.
# Writes OUT_DIR/gpu.json (the figures) and OUT_DIR/gpu.log.
#
# Sizes: CLIP ViT-B/32 fp16 at batch 1, 64, 512; VQGAN+CLIP 256² and 512²
# with 32 cutouts (CLIP fp16, VQGAN fp32), and 1 and 8 jobs at 256²
# optimised at once by the engine (jobs per second, as a worker's
# --max-batch gives them); DALL·E mini and mega fp16 at batch 1, 8, 16. KILN_BENCH_ARGS adds or overrides flags (e.g.
# "--dalle-models mini" for a quicker run); KILN_BENCH_CASES picks cases.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
py=${KILN_BENCH_PYTHON:-$(command -v python3)}
bin=${KILN_BENCH_BIN:-$here/bin/kiln-bench}
[ -x "$bin" ] || { echo "no kiln-bench binary at $bin (run bench/gpu/prepare.sh)" >&2; exit 1; }

if ls "$here"/wheels/*.whl >/dev/null 2>&1; then
  site=${TMPDIR:-/tmp}/kiln-bench-site
  # Only what this Python lacks: a carried wheel never replaces an installed package.
  need=()
  for w in "$here"/wheels/*.whl; do
    name=$(basename "$w" | cut -d- -f1 | tr '_' '-')
    "$py" -m pip show -q "$name" >/dev/null 2>&1 || need+=("$w")
  done
  if [ ${#need[@]} -gt 0 ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$site" "${need[@]}"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
"$py" - <<'PY'
import torch, transformers, min_dalle, taming.modules.diffusionmodules.model  # noqa: F401
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "transformers", transformers.__version__, flush=True)
PY
torch_lib=$("$py" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export LD_LIBRARY_PATH=$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

set -o pipefail
# shellcheck disable=SC2086
timeout 570 "$bin" ${KILN_BENCH_CASES:-clip vqgan dalle} \
  --device "${KILN_BENCH_DEVICE:-cuda}" \
  --python "$py" \
  --baselines "$here/../baselines" \
  --out "$out/gpu.json" \
  ${KILN_BENCH_ARGS:-} 2> >(tee "$out/gpu.log" >&2) >/dev/null
echo "figures in $out/gpu.json" >&2
"$py" - "$out/gpu.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for name, c in d["cases"].items():
    print(name, json.dumps({k: v for k, v in c.items() if k.startswith(("speedup", "time_ratio", "error"))}))
PY
