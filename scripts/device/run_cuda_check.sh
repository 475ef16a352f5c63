#!/usr/bin/env bash
# The CUDA path of the embedding agent, on a GPU machine that has python3, the CUDA libraries (the
# nvidia-* pip packages of a PyTorch install) and nothing else of ours: no network, so the wheels
# (our dependencies for Python 3.12, in .whl/) and onnxruntime-gpu (a split xz tarball: parts carried
# ahead into /tmp/ck, the last one in .whl/) travel with the call. Writes its results under $OUT.
#
#   bash scripts/device/run_cuda_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/cuda-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi -L; python3 -V
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 2
cat /tmp/ck/ort.part.* .whl/ort.part.* > /tmp/ort.tar.xz
(cd /tmp && sha256sum -c "$OLDPWD/.whl/ort.sha") || exit 3
tar -xJf /tmp/ort.tar.xz -C /tmp/site || exit 4
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1

echo "== 1. no library path set: what onnxruntime-gpu finds on its own"
python3 -c 'import onnxruntime as o; print(o.__file__, o.__version__, o.get_available_providers())'
python3 -c 'from visionjobs.vision.session import create_session as c; from visionjobs.settings import get_settings as g; print("provider:", c(g().model_path).provider)'

echo "== 2. with the nvidia-* library folders of this python on LD_LIBRARY_PATH"
SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
LIBS=$(find "$SP/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
python3 scripts/device/cuda_check.py --n-images 512 --profile --out "$OUT/cuda_check.json"; echo "cuda_check rc=$?"

echo "== 3. the vision and embedding-agent unit tests on this machine (CUDA picked by default)"
python3 -m pytest -q -p no:cacheprovider --basetemp /tmp/pt -o addopts="--import-mode=importlib" \
  tests/unit/vision tests/unit/agents/test_embedding_agent.py 2>&1 | tail -25; echo "pytest rc=${PIPESTATUS[0]}"
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
