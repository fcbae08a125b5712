# One LoRA training step (forward with labels + backward, no optimizer) of PEFT on transformers'
# DeepseekV4ForCausalLM, CPU, float32 compute, for bench/step.mjs. The checkpoint must be BF16
# (transformers cannot run the FP8 release layout on CPU). Targets mirror v4tune's default: the
# attention projections (o_a_proj through target_parameters), the shared expert and the stacked
# routed experts (target_parameters). Prints one JSON line.
# Usage: python peft_step.py MODEL_DIR TOKENS REPS THREADS RANK [DTYPE]
# DTYPE float32 (default: float32 weights and compute) or bfloat16 (the model loaded in bfloat16,
# PEFT's default for such a model: LoRA weights kept in float32, autocast_adapter_dtype) with the
# step under torch.autocast('cpu', bfloat16): transformers' V4 keeps the mHC streams in float32,
# so its bfloat16 linears need autocast to run at all.
import contextlib, json, resource, sys, time
import torch

model_dir, T, reps, threads, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dtype_name = sys.argv[6] if len(sys.argv) > 6 else 'float32'
if dtype_name not in ('float32', 'bfloat16'):
    sys.exit(f'peft_step.py: DTYPE must be float32 or bfloat16 (got {dtype_name})')
torch.set_num_threads(threads)
torch.manual_seed(0)
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

t0 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype_name))
load_s = time.perf_counter() - t0
cfg = LoraConfig(r=r, lora_alpha=2 * r,
                 target_modules=r'model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|kv_proj|o_b_proj)|mlp\.shared_experts\.(gate_proj|up_proj|down_proj))',
                 target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj', 'self_attn.o_a_proj.weight'])
pm = get_peft_model(m, cfg)
pm.train()
V = m.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % V for i in range(T)]])

def step():
    with (torch.autocast('cpu', dtype=torch.bfloat16) if dtype_name == 'bfloat16' else contextlib.nullcontext()):
        loss = pm(ids, labels=ids).loss
    loss.backward()
    pm.zero_grad(set_to_none=True)
    return float(loss)

step()  # warm-up
times = []
for _ in range(reps):
    t = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t)
times.sort()
med = times[len(times) // 2]
print(json.dumps({'tokens': T, 'seconds_median': med, 'seconds': times, 'tokens_per_s': T / med, 'loss': loss,
                  'threads': threads, 'rank': r, 'dtype': dtype_name, 'load_seconds': load_s,
                  'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  'torch': torch.__version__, 'trainable': sum(p.numel() for p in pm.parameters() if p.requires_grad)}))
