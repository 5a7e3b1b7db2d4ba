#!/usr/bin/env python3
"""This project's PyTorch reference of its default VQ-VAE (the paper's CNN+ResNet model with fixed
or adaptive quantizers), for `cargo xtask bench --compare-torch` and the forward-agreement test.

The model is the one `vq-train` trains by default, written in PyTorch eager:
- encoder: Conv 4x4 s2 (C -> h/2), ReLU, Conv 4x4 s2 (h/2 -> h), ReLU, Conv 3x3 (h -> h), two
  residual blocks x + Conv1x1(ReLU(Conv3x3(ReLU(x)))) without biases, ReLU;
- quantizer: a pool of codebooks [N_i, D_i], each with a linear projection h -> D_i, an EMA
  codebook (decay 0.99, eps 1e-5, loss beta * (|sg(z) - e|^2 + alpha |z - sg(e)|^2) with
  alpha = 0.25, beta = 1) and a linear back-projection D_i -> h; for a pool, 2-head attention
  between each latent vector and one learned key per codebook gives the logits (log of the
  head-averaged attention probabilities), a hard straight-through Gumbel-Softmax (or the argmax
  in evaluation) picks one codebook per latent vector;
- decoder: Conv 3x3 (h -> h), the residual blocks, ReLU, ConvT 4x4 s2 (h -> h/2), ReLU,
  ConvT 4x4 s2 (h/2 -> C).
Parameter names are the Rust model's VarBuilder paths (`encoder.conv1.weight`,
`quantizer.books.3.project_in.weight`, `quantizer.selector.keys`, ...), so the weights of a
`vq-train` checkpoint (model.safetensors) load as they are.

Setup: pip install torch (CPU is enough). Commands (one JSON line on stdout each):
  bench --model adaptive|fixed512x128|fixed16384x4 --shape mnist|cifar [--steps 10 --warmup 3]
      median/min/max ms of a training step (forward, loss, backward, Adam, EMA update) and of
      the forward alone, and the process's peak RSS in MiB;
  quant-bench --T 3136 [--steps 10 --warmup 3]
      the adaptive quantizer alone on [T, 128] vectors, forward and backward;
  fsq-bench --T 3136 --levels 8,8,8,5,5,5 [--steps 10 --warmup 3]
      the FSQ of the vector-quantize-pytorch package (pip install vector-quantize-pytorch)
      alone on [T, len(levels)] vectors, training mode, forward and backward;
  vq-bench --T 3136 --variant rotation|cosine|simvq|rvq [--steps 10 --warmup 3]
      that package's VectorQuantize (EMA, decay 0.99, commitment 0.25) with the rotation trick
      or cosine similarity, its SimVQ (straight-through), or its ResidualVQ of 2 such
      codebooks (straight-through), codebook [1024, 64], alone on
      [T, 64] vectors, training mode, forward and backward of mean(z_q²) + its loss;
  lfq-bench --T 3136 --bits 16 [--steps 10 --warmup 3]
      that package's LFQ (default loss: entropy weight 0.1, β = 100) alone on [T, bits]
      vectors, training mode, forward and backward of mean(z_q²) + its loss;
  forward --weights model.safetensors --input x.safetensors --out out.safetensors
      evaluation forward (argmax routing, no codebook update) of the input tensor `x`
      [B, C, H, W]; writes `z_e`, `z_q`, `reconstruction`, and per latent position `codebook`
      (the chosen one) and `index` (its codeword), as float. The pool is read from the weights.
Threads: torch.set_num_threads($ADQ_THREADS, default 2).
"""
import argparse
import json
import os
import resource
import statistics
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("ADQ_THREADS", "2")))

HIDDEN, RES_HIDDEN, RES_LAYERS = 128, 32, 2
W = 65536
POOL = [(W >> k, 1 << k) for k in range(7, -1, -1)]  # [512,128] ... [65536,1]
SHAPES = {"mnist": (64, 1, 28, 28), "cifar": (64, 3, 32, 32)}


# ------------------------------------------------------------------ safetensors (no extra package)
_DTYPES = {"F32": torch.float32, "U32": torch.int32, "I64": torch.int64}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        buf = bytearray(raw[8 + n + a : 8 + n + b])
        t = torch.frombuffer(buf, dtype=_DTYPES[meta["dtype"]]) if b > a else torch.empty(0)
        out[name] = t.reshape(meta["shape"]).clone()
    return out


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


# ------------------------------------------------------------------ encoder / decoder
class ResidualLayer(nn.Module):
    def __init__(self, h, rh):
        super().__init__()
        self.conv3 = nn.Conv2d(h, rh, 3, 1, 1, bias=False)
        self.conv1 = nn.Conv2d(rh, h, 1, 1, 0, bias=False)

    def forward(self, x):
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class Residual(nn.Module):
    """The residual stack; its final ReLU is applied by the caller (as in the Rust model)."""

    def __init__(self, h, rh, n):
        super().__init__()
        self.layers = nn.ModuleList([ResidualLayer(h, rh) for _ in range(n)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class Encoder(nn.Module):
    def __init__(self, c, h=HIDDEN):
        super().__init__()
        self.conv1 = nn.Conv2d(c, h // 2, 4, 2, 1)
        self.conv2 = nn.Conv2d(h // 2, h, 4, 2, 1)
        self.conv3 = nn.Conv2d(h, h, 3, 1, 1)
        self.residual = Residual(h, RES_HIDDEN, RES_LAYERS)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return F.relu(self.residual(self.conv3(x)))


class Decoder(nn.Module):
    def __init__(self, c, h=HIDDEN):
        super().__init__()
        self.conv1 = nn.Conv2d(h, h, 3, 1, 1)
        self.residual = Residual(h, RES_HIDDEN, RES_LAYERS)
        self.deconv1 = nn.ConvTranspose2d(h, h // 2, 4, 2, 1)
        self.deconv2 = nn.ConvTranspose2d(h // 2, c, 4, 2, 1)

    def forward(self, z):
        x = F.relu(self.residual(self.conv1(z)))
        return self.deconv2(F.relu(self.deconv1(x)))


# ------------------------------------------------------------------ quantizers
class EmaCodebook(nn.Module):
    """Nearest codeword by squared distance, EMA codebook update, straight-through output."""

    def __init__(self, n, d, alpha=0.25, beta=1.0, decay=0.99, eps=1e-5):
        super().__init__()
        self.alpha, self.beta, self.decay, self.eps = alpha, beta, decay, eps
        self.register_buffer("embedding", torch.randn(n, d))
        self.register_buffer("ema_w", self.embedding.clone())
        self.register_buffer("ema_cluster_size", torch.zeros(n))

    def forward(self, z, update):
        z_sg = z.detach()
        e = self.embedding
        dist = (z_sg * z_sg).sum(1, keepdim=True) - 2.0 * z_sg @ e.t() + (e * e).sum(1)
        idx = dist.argmin(1)
        q = e.index_select(0, idx)
        loss = self.beta * (F.mse_loss(q, z_sg) + self.alpha * F.mse_loss(z, q))
        if update:
            with torch.no_grad():
                n = e.shape[0]
                counts = torch.bincount(idx, minlength=n).to(z.dtype)
                cs = self.decay * self.ema_cluster_size + (1 - self.decay) * counts
                total = cs.sum()
                cs = (cs + self.eps) / (total + n * self.eps) * total
                dw = torch.zeros_like(self.ema_w).index_add_(0, idx, z_sg)
                self.ema_w.mul_(self.decay).add_(dw, alpha=1 - self.decay)
                self.ema_cluster_size.copy_(cs)
                self.embedding.copy_(self.ema_w / cs.unsqueeze(1))
        return q + (z - z_sg), idx, loss


class Book(nn.Module):
    def __init__(self, n, d, h=HIDDEN):
        super().__init__()
        self.project_in = nn.Linear(h, d)
        self.quantizer = EmaCodebook(n, d)
        self.project_out = nn.Linear(d, h)

    def forward(self, flat, update):
        q, idx, loss = self.quantizer(self.project_in(flat), update)
        return self.project_out(q), idx, loss


class Selector(nn.Module):
    """Scores of each vector against one learned key per codebook, 2 heads; logits are the log
    of the head-averaged attention probabilities."""

    def __init__(self, m, h=HIDDEN, heads=2):
        super().__init__()
        self.heads = heads
        self.keys = nn.Parameter(torch.randn(m, h))
        self.q_proj = nn.Linear(h, h)
        self.k_proj = nn.Linear(h, h)

    def forward(self, flat):
        t, c = flat.shape
        m, hd = self.keys.shape[0], c // self.heads
        q = self.q_proj(flat).reshape(t, self.heads, hd).transpose(0, 1)  # [H, T, hd]
        k = self.k_proj(self.keys).reshape(m, self.heads, hd).permute(1, 2, 0)  # [H, hd, m]
        log_p = F.log_softmax(q @ k / hd**0.5, dim=-1)
        return torch.logsumexp(log_p, 0) - torch.log(torch.tensor(float(self.heads)))


class Pool(nn.Module):
    """A pool of projected codebooks (a pool of one is a fixed codebook)."""

    def __init__(self, pool, h=HIDDEN):
        super().__init__()
        self.books = nn.ModuleList([Book(n, d, h) for n, d in pool])
        self.selector = Selector(len(pool), h) if len(pool) > 1 else None

    def forward(self, z_e, tau=1.0, train=True):
        b, c, hh, ww = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, c)
        outs, idxs, losses = zip(*[bk(flat, train) for bk in self.books])
        loss = torch.stack(losses).mean()
        if self.selector is None:
            z, chosen = outs[0], torch.zeros(flat.shape[0], dtype=torch.long)
        else:
            logits = self.selector(flat)
            if train:
                sel = F.gumbel_softmax(logits, tau=tau, hard=True)
            else:
                sel = F.one_hot(logits.argmax(1), len(self.books)).to(flat.dtype)
            z = (torch.stack(outs, 1) * sel.unsqueeze(2)).sum(1)
            chosen = sel.argmax(1)
        index = torch.stack(idxs, 1).gather(1, chosen.unsqueeze(1)).squeeze(1)
        z_q = z.reshape(b, hh, ww, c).permute(0, 3, 1, 2)
        return z_q, loss, (chosen.reshape(b, hh, ww), index.reshape(b, hh, ww))


class VqVae(nn.Module):
    def __init__(self, c, pool):
        super().__init__()
        self.encoder = Encoder(c)
        self.quantizer = Pool(pool)
        self.decoder = Decoder(c)

    def forward(self, x, tau=1.0, train=True):
        z_e = self.encoder(x)
        z_q, vq_loss, codes = self.quantizer(z_e, tau, train)
        recon = self.decoder(z_q)
        return recon, F.mse_loss(recon, x) + vq_loss, z_e, z_q, codes


def pool_of(model):
    if model == "adaptive":
        return POOL
    if model.startswith("fixed"):
        n, d = model[len("fixed") :].split("x")
        return [(int(n), int(d))]
    raise SystemExit(f"--model {model}: expected adaptive or fixedNxD")


# ------------------------------------------------------------------ commands
def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn, steps, warmup):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def summary(ms, **extra):
    out = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}
    out.update(extra)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def bench(args):
    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    model = VqVae(shape[1], pool_of(args.model))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(shape) - 0.5

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss, *_ = model(x, tau=1.0, train=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad():
            model(x, tau=1.0, train=True)

    ms = timed(step, args.steps, args.warmup)
    fwd = timed(forward, args.steps, args.warmup)
    return summary(ms, model=args.model, shape=args.shape, fwd_only_median_ms=statistics.median(fwd))


def quant_bench(args):
    torch.manual_seed(0)
    pool = Pool(POOL)
    z_e = torch.randn(1, HIDDEN, args.T, 1, requires_grad=True)

    def step():
        z_q, loss, _ = pool(z_e, tau=1.0, train=True)
        (z_q.square().mean() + loss).backward()

    return summary(timed(step, args.steps, args.warmup), model="quantizer", T=args.T)


def fsq_bench(args):
    from vector_quantize_pytorch import FSQ

    torch.manual_seed(0)
    levels = [int(v) for v in args.levels.split(",")]
    fsq = FSQ(levels=levels).train()
    z = torch.randn(1, args.T, len(levels), requires_grad=True)

    def step():
        z_q, _ = fsq(z)
        z_q.square().mean().backward()

    return summary(timed(step, args.steps, args.warmup), model="fsq", T=args.T)


def lfq_bench(args):
    from vector_quantize_pytorch import LFQ

    torch.manual_seed(0)
    lfq = LFQ(dim=args.bits).train()  # defaults: entropy weight 0.1, β = 100
    z = torch.randn(1, args.T, args.bits, requires_grad=True)

    def step():
        z_q, _, aux = lfq(z)
        (z_q.square().mean() + aux).backward()

    return summary(timed(step, args.steps, args.warmup), model="lfq", T=args.T)


def vq_bench(args):
    import vector_quantize_pytorch as vqp

    torch.manual_seed(0)
    common = dict(dim=VQ_BENCH_DIM, codebook_size=VQ_BENCH_CODES)
    ema = dict(decay=0.99, commitment_weight=0.25)
    if args.variant == "simvq":
        q = vqp.SimVQ(**common, rotation_trick=False)
    elif args.variant == "rvq":
        q = vqp.ResidualVQ(**common, **ema, num_quantizers=2, rotation_trick=False)
    else:
        if args.variant == "rotation":
            q = vqp.VectorQuantize(**common, **ema, rotation_trick=True)
        else:
            q = vqp.VectorQuantize(**common, **ema, use_cosine_sim=True, rotation_trick=False)
    q.train()
    z = torch.randn(1, args.T, VQ_BENCH_DIM, requires_grad=True)

    def step():
        z_q, _, loss = q(z)
        (z_q.square().mean() + loss.sum()).backward()

    return summary(timed(step, args.steps, args.warmup), model=args.variant, T=args.T)


# The codebook of `vq-bench` (and of `xtask bench`'s rotation, cosine and simvq cases).
VQ_BENCH_CODES, VQ_BENCH_DIM = 1024, 64


def forward(args):
    weights = read_safetensors(args.weights)
    pool = []
    while f"quantizer.books.{len(pool)}.quantizer.embedding" in weights:
        pool.append(tuple(weights[f"quantizer.books.{len(pool)}.quantizer.embedding"].shape))
    x = read_safetensors(args.input)["x"]
    model = VqVae(x.shape[1], pool)
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise SystemExit(f"{args.weights}: no tensor for {', '.join(missing)}")
    model.load_state_dict({k: weights[k].to(state[k].dtype) for k in state})
    model.eval()
    with torch.no_grad():
        recon, _, z_e, z_q, (book, index) = model(x, train=False)
    out = {"z_e": z_e, "z_q": z_q, "reconstruction": recon, "codebook": book, "index": index}
    write_safetensors(args.out, out)
    return {"pool": pool, "out": args.out}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "cmd", choices=["bench", "quant-bench", "fsq-bench", "lfq-bench", "vq-bench", "forward"]
    )
    ap.add_argument("--model", default="adaptive")
    ap.add_argument("--shape", default="mnist", choices=list(SHAPES))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--T", type=int, default=3136)
    ap.add_argument("--levels", default="8,8,8,5,5,5")
    ap.add_argument("--bits", type=int, default=16)
    ap.add_argument(
        "--variant", default="rotation", choices=["rotation", "cosine", "simvq", "rvq"]
    )
    ap.add_argument("--weights")
    ap.add_argument("--input")
    ap.add_argument("--out")
    # Accepted for compatibility with the earlier reference's command lines; this script always
    # gathers codewords by index (no one-hot matrix).
    ap.add_argument("--vq-impl", default="index", choices=["index"])
    a = ap.parse_args()
    run = {
        "bench": bench,
        "quant-bench": quant_bench,
        "fsq-bench": fsq_bench,
        "lfq-bench": lfq_bench,
        "vq-bench": vq_bench,
        "forward": forward,
    }
    run = run[a.cmd]
    print(json.dumps(run(a)), flush=True)


if __name__ == "__main__":
    main()
