"""Measure the GPU throughputs that harness/run/estimate.py uses (training and generation tokens/s).

A randomly initialised model with Mistral-7B-Instruct-v0.2's shape (no download: the speed
of a dense transformer does not depend on its weights) in bfloat16 on one GPU:
- training: LoRA r=16 on every linear layer, AdamW, micro-batch 8 x 512 tokens;
- generation: plain ``model.generate`` (greedy, KV cache), 64-token prompts, 256 new tokens.
Run with a CUDA build of torch, transformers and peft: ``python benchmarks/gpu_throughput.py``.
"""
import json, os, time
import torch
from transformers import AutoModelForCausalLM, MistralConfig
from peft import LoraConfig, get_peft_model

c = MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    m = AutoModelForCausalLM.from_config(c)
n = sum(p.numel() for p in m.parameters())
m.eval()
m.generation_config.eos_token_id = None
m.generation_config.pad_token_id = 0
r = {"gpu": torch.cuda.get_device_name(0), "params": n, "torch": torch.__version__}
for B in (32, 128):
    x = torch.randint(100, 32000, (B, 64), device="cuda")
    kw = dict(attention_mask=torch.ones_like(x), do_sample=False)
    m.generate(x, max_new_tokens=4, min_new_tokens=4, **kw)
    torch.cuda.synchronize(); t = time.time()
    o = m.generate(x, max_new_tokens=256, min_new_tokens=256, **kw)
    torch.cuda.synchronize(); dt = time.time() - t
    r[f"gen_tok_s_batch{B}"] = round(B * (o.shape[1] - 64) / dt)
    print(B, dt, r, flush=True)
mods = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
p = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules=mods))
p.train()
for q in p.parameters():
    if q.requires_grad:
        q.data = q.data.float()
opt = torch.optim.AdamW([q for q in p.parameters() if q.requires_grad], lr=1e-4)
x = torch.randint(100, 32000, (8, 512), device="cuda")
def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = p(input_ids=x, labels=x).loss
    loss.backward(); opt.step(); opt.zero_grad()
for _ in range(2):
    step()
torch.cuda.synchronize(); t = time.time()
for _ in range(5):
    step()
torch.cuda.synchronize(); dt = time.time() - t
r["train_lora_tok_s"] = round(5 * 8 * 512 / dt)
r["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
print(json.dumps(r), flush=True)
out = os.environ.get("OUT")
if out:
    open(os.path.join(out, "throughput.json"), "w").write(json.dumps(r, indent=1))
