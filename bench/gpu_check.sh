#!/usr/bin/env bash
# The GPU figures in one run, each written to OUTPUT_DIR (default runs/gpu-check) as soon as it is measured:
#   model     model_throughput.json: train step of ChatForgeForCausalLM vs the plain-PyTorch GPT, gpt2-124m, bf16,
#             torch.compile
#   pretrain  pretrain_sdpa.json: the pretraining loop vs a bare loop and vs the plain-PyTorch GPT, gpt2-124m
#             (50,304 tokens, B=32, T=1024, bf16, torch.compile), documents masked by sdpa; the loop's overhead
#             (host syncs, batches built ahead in pinned memory, logging) is its ratio to the bare loop
#   recipe    recipe/: `accelerate launch recipes/pretrain.py` on the tiny recipe, 300 steps (metrics, samples), from
#             the embedded corpus's tokenizer and shards made in tiny/
#   flex      pretrain_flex.json: as pretrain, documents masked by flex_attention
#   causal    pretrain_causal.json: as pretrain, one causal window per row (no document masking)
#
#   bash bench/gpu_check.sh [OUTPUT_DIR [STEP ...]]      # default steps: model pretrain flex causal recipe
#
# Each step compiles its models first (a minute or two each). Runs from the repository root with
# PYTHONPATH=src (no install needed where torch and chatforge's pinned transformers and accelerate are). The recipe
# step imports the whole command line, so it also needs trl, datasets, bm25s, math-verify and orjson. On a machine
# without a package index, put the wheels in .whl/: they are installed to /tmp/site first.
set -uo pipefail
out=${1:-runs/gpu-check}
if [ $# -gt 1 ]; then steps=("${@:2}"); else steps=(model pretrain flex causal recipe); fi
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
status=0
run() {  # run NAME COMMAND...: log to $out/NAME.log, note a failure and go on
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$out/$name.log" | grep -v -e "it/s]" -e "s/it]"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$python -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$out/gpu.txt"
pretrain_bench=(bench/pretrain_throughput.py --preset gpt2-124m --vocab-size 50304 --seq-len 1024 --batch-size 32
                --steps 40 --warmup 15 --repeats 1 --compile)
for step in "${steps[@]}"; do
    case $step in
        model) run model_throughput $python bench/model_throughput.py --preset gpt2-124m --compile --rounds 6 \
                   --json "$out/model_throughput.json" ;;
        pretrain) run pretrain_sdpa $python "${pretrain_bench[@]}" --reference --json "$out/pretrain_sdpa.json" ;;
        flex) run pretrain_flex $python "${pretrain_bench[@]}" --attn flex_attention --json "$out/pretrain_flex.json" ;;
        causal) run pretrain_causal $python "${pretrain_bench[@]}" --no-document-masking \
                    --json "$out/pretrain_causal.json" ;;
        recipe) run tiny_inputs $python -c "import sys; from chatforge.training.inputs import embedded_inputs
embedded_inputs(sys.argv[1])" "$out/tiny"
                run recipe $python -m accelerate.commands.launch --config_file accelerate_configs/single_gpu.yaml \
                    recipes/pretrain.py --config recipes/tiny/pretrain.yaml --output_dir "$out/recipe" \
                    --dataset_dir "$out/tiny/shards" --tokenizer_name_or_path "$out/tiny/tokenizer" --max_steps 300 \
                    --save_steps 300 --sample_steps 300 --report_to none ;;
        *) echo "unknown step $step: use model, pretrain, recipe, flex, causal" >&2; exit 2 ;;
    esac
done
exit $status
