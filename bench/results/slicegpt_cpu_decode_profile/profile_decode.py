import sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache
from prunekit.methods.slicegpt.layers import restructure
torch.set_num_threads(2)
which = sys.argv[1]
cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
                  rms_norm_eps=1e-5, head_dim=64)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).eval()
if which != 'dense':
    k = int(which)
    restructure(model, [k] * 61, tied=True)
    with torch.no_grad():
        for p in model.parameters(): p.normal_(0, 0.02)
print(which, sum(p.numel() for p in model.parameters())/1e6)
P=128
ids = torch.randint(0, 49152, (1, P))
cache = StaticCache(config=model.config, max_cache_len=P + 64)
with torch.no_grad():
    model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(P), use_cache=True)
    tok = torch.randint(0, 49152, (1, 1))
    def step(i):
        model(input_ids=tok, past_key_values=cache, cache_position=torch.tensor([P + i]), use_cache=True)
    for i in range(3): step(i)
    ts=[]
    for r in range(3):
        t0=time.perf_counter()
        for i in range(10): step(i)
        ts.append((time.perf_counter()-t0)/10)
    print('step ms', [round(t*1000,1) for t in ts])
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for i in range(10): step(i)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=14))
