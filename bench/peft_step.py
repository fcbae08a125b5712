# One LoRA training step (forward with labels + backward, no optimizer) of PEFT on transformers'
# DeepseekV4ForCausalLM, CPU, float32 compute, for bench/step.mjs. The checkpoint must be BF16
# (transformers cannot run the FP8 release layout on CPU). Targets mirror v4tune's default: the
# attention projections (o_a_proj through target_parameters), the shared expert and the stacked
# routed experts (target_parameters). Prints one JSON line.
# Usage: python peft_step.py MODEL_DIR TOKENS REPS THREADS RANK
import json, sys, time
import torch

model_dir, T, reps, threads, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

t0 = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
load_s = time.perf_counter() - t0
cfg = LoraConfig(r=r, lora_alpha=2 * r,
                 target_modules=r'model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|kv_proj|o_b_proj)|mlp\.shared_experts\.(gate_proj|up_proj|down_proj))',
                 target_parameters=['mlp.experts.gate_up_proj', 'mlp.experts.down_proj', 'self_attn.o_a_proj.weight'])
pm = get_peft_model(m, cfg)
pm.train()
V = m.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % V for i in range(T)]])

def step():
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
                  'threads': threads, 'rank': r, 'load_seconds': load_s,
                  'torch': torch.__version__, 'trainable': sum(p.numel() for p in pm.parameters() if p.requires_grad)}))
