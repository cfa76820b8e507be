#!/usr/bin/env bash
# The speed harness on a lent GPU, as one call of the device tool (an H200 lent
# for 15 minutes in all, so every stage has a deadline and writes its table
# under $OUT as it goes). The machine's image has PyTorch, JAX, transformers;
# Keras, keras-hub and two of Keras' dependencies travel as wheels in .whl:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .whl keras==3.15.1 keras-hub==0.32.0 \
#     namex==0.1.0 optree==0.20.0
set -u
OUT=${OUT:-/tmp/bertdesk-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
    | tee "$OUT/machine.txt"
python3 -c "import sys, keras, jax, torch, transformers; print('python', sys.version.split()[0],
'keras', keras.__version__, 'jax', jax.__version__, jax.devices(), 'torch', torch.__version__,
'transformers', transformers.__version__)" 2>&1 | tail -1 | tee -a "$OUT/machine.txt"

common="--device cuda --precisions bf16 --backends jax,torch --repeats 10 --warmup 3"
# 1. The published anchor's job: a BERT-large pretraining step, seq 128,
#    batch 256, 20 masked positions per sequence.
python3 bench/speed.py $common --modes pretrain --shapes large --seqs 128 --batch 256 \
    --impls transformers,bertdesk,keras_hub --deadline "${PRETRAIN_S:-170}" \
    --json-out "$OUT/pretrain.json" 2>&1 | tee "$OUT/pretrain.log"
# 2. The classifier training step, base and large, seq 128 (batch 256) and 512 (batch 64).
python3 bench/speed.py $common --modes train --shapes base,large --seqs 128,512 --batch 256 \
    --impls transformers,bertdesk,keras_hub --deadline "${TRAIN_S:-300}" \
    --json-out "$OUT/train.json" 2>&1 | tee "$OUT/train.log"
# 3. Forward (inference), same shapes.
python3 bench/speed.py $common --modes forward --shapes base,large --seqs 128,512 --batch 256 \
    --impls transformers,bertdesk --deadline "${FORWARD_S:-70}" \
    --json-out "$OUT/forward.json" 2>&1 | tee "$OUT/forward.log"
