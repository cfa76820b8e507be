#!/usr/bin/env bash
# The speed harness on a lent GPU, as one call of the device tool (an H200 lent
# for 15 minutes in all, so every stage has a deadline and writes its table
# under $OUT as it goes: eight files, the most the device tool brings back,
# so run it without a tee into $OUT). The machine's image has PyTorch, JAX, transformers;
# Keras, keras-hub and two of Keras' dependencies travel as wheels in .whl:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .whl keras==3.15.1 keras-hub==0.32.0 \
#     namex==0.1.0 optree==0.20.0
set -u
OUT=${OUT:-/tmp/bertdesk-gpu}
mkdir -p "$OUT" /tmp/gpu-json
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

# What fit's per-step wait for the progress callback's logs costs on the GPU
# (bench/fit_dispatch.py): a second call, `FIT_ONLY=1 bash bench/gpu_run.sh`,
# about 3 minutes; the stages below do not run then.
if [ -n "${FIT_ONLY:-}" ]; then
    for backend in jax torch; do
        KERAS_BACKEND=$backend timeout "${FIT_S:-80}" python3 bench/fit_dispatch.py \
            --shape base --batch 64 --seq 128 --precision bf16 --steps 30 --rounds 3 2>&1 \
            | grep -v "^I0000\|^E0000\|^W0000" | tee "$OUT/fit_dispatch_$backend.log"
    done
    exit 0
fi

common="--device cuda --precisions bf16 --repeats 10 --warmup 3"
# Stages in the order they matter, each with a deadline (seconds); all
# together about 9.5 minutes after the set-up.
# 1. The classifier training step on PyTorch, base and large, seq 128
#    (batch 256) and 512 (batch 64): transformers and bertdesk.
python3 bench/speed.py $common --modes train --shapes base,large --seqs 128,512 --batch 256 \
    --impls transformers,bertdesk --backends torch --deadline "${TORCH_TRAIN_S:-110}" \
    --json-out "/tmp/gpu-json/train_torch.json" 2>&1 | tee "$OUT/train_torch.log"
# 2. Where each PyTorch step's time goes (base, seq 128, batch 256).
timeout "${PROFILE_S:-80}" python3 bench/gpu_profile.py --shape base --seq 128 --batch 256 \
    2>&1 | grep -v "^USDT\|UserWarning\|self.profiler" | tee "$OUT/profile.log"
# 2b. Which attention kernel JAX gives a padded batch (XLA or cuDNN), timed.
timeout "${PROBE_S:-40}" python3 bench/jax_attention_probe.py 2>&1 \
    | grep -v "^I0000\|^E0000\|^W0000" | tee "$OUT/jax_attention.log"
# 3. Forward (inference), outputs left on the device (bench/speed.py's _device_forward).
python3 bench/speed.py $common --modes forward --shapes base,large --seqs 128,512 --batch 256 \
    --impls transformers,bertdesk --backends torch,jax --deadline "${FORWARD_S:-100}" \
    --json-out "/tmp/gpu-json/forward.json" 2>&1 | tee "$OUT/forward.log"
# 4. The training step on JAX (each shape compiles for 25-55 s).
python3 bench/speed.py $common --modes train --shapes base,large --seqs 128,512 --batch 256 \
    --impls bertdesk --backends jax --deadline "${JAX_TRAIN_S:-160}" \
    --json-out "/tmp/gpu-json/train_jax.json" 2>&1 | tee "$OUT/train_jax.log"
# 5. The published anchor's job: a BERT-large pretraining step, seq 128,
#    batch 256, 20 masked positions per sequence.
python3 bench/speed.py $common --modes pretrain --shapes large --seqs 128 --batch 256 \
    --impls transformers,bertdesk --backends torch,jax --deadline "${PRETRAIN_S:-110}" \
    --json-out "/tmp/gpu-json/pretrain.json" 2>&1 | tee "$OUT/pretrain.log"
tar -C /tmp -czf "$OUT/json.tgz" gpu-json
