"""PyTorch side of `cargo xtask bench-layers`: forward + backward of single convolutions.

argv[1]: JSON {"batch", "steps", "warmup", "threads", "layers": [{"name", "cin", "cout", "k",
"stride", "pad", "side", "transposed", "bias", "input_grad"}]}. Prints one JSON line
{name: median ms}. The loss is y.sum(), as on the Rust side.
"""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
out = {}
for L in cfg["layers"]:
    b, cin, cout, k, s = cfg["batch"], L["cin"], L["cout"], L["k"], L["side"]
    x = (torch.rand(b, cin, s, s) * 2 - 1).requires_grad_(L["input_grad"])
    wshape = (cin, cout, k, k) if L["transposed"] else (cout, cin, k, k)
    w = (torch.randn(*wshape) * 0.05).requires_grad_(True)
    bias = torch.zeros(cout, requires_grad=True) if L["bias"] else None
    conv = F.conv_transpose2d if L["transposed"] else F.conv2d
    times = []
    for i in range(cfg["warmup"] + cfg["steps"]):
        for t in (x, w, bias):
            if t is not None:
                t.grad = None
        t0 = time.perf_counter()
        conv(x, w, bias, L["stride"], L["pad"]).sum().backward()
        if i >= cfg["warmup"]:
            times.append((time.perf_counter() - t0) * 1e3)
    out[L["name"]] = statistics.median(times)
print(json.dumps(out))
