"""GPU checks of the fused dense-block path (run by .ci/gpu-check; needs CUDA, torch, torchvision).

1. fp32 with TF32 off: one training step of densenet121 + deeplabv3 (OS8) in memory-efficient mode
   with the fused kernels, against plain mode: per-parameter gradient and BN-buffer deviations.
2. bf16 autocast, channels-last: 200 iterations of the same training loop (SGD, cross-entropy, the
   same batches of a synthetic shapes task) for plain, memory-efficient fused, unfused and with
   CUDA-graphed blocks; prints
   the loss curves (every 20 iterations, mean of the last 20) and the throughput of each.
3. A profile of one fused memory-efficient step (top CUDA kernels by time), to $OUT/profile.txt.
Exits non-zero when a check fails.
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

from segdense import build_model

OUT = os.environ.get("OUT", "gpu-check-out")
dev = "cuda"


def model(memory_efficient, fused=None, seed=0, cuda_graphs=False, **kw):
    torch.manual_seed(seed)
    bk = {} if fused is None else {"fused": fused}
    if cuda_graphs:
        bk["cuda_graphs"] = True
    return build_model("densenet121", {"name": "deeplabv3", **kw}, num_classes=5, output_stride=8,
                       memory_efficient=memory_efficient, **bk).to(dev)


def logits(out):
    return out["out"] if isinstance(out, dict) else out


def fp32_gradients() -> bool:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    plain, fused, unfused = model(False), model(True, True), model(True, False)
    fused.load_state_dict(plain.state_dict())
    unfused.load_state_dict(plain.state_dict())
    plain, fused, unfused = (m.to(memory_format=torch.channels_last).train() for m in (plain, fused, unfused))
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(4, 3, 256, 256, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (4, 256, 256), device=dev, generator=g)
    for m in (plain, fused, unfused):
        torch.manual_seed(0)  # the same dropout masks in the head (ASPP projection)
        F.cross_entropy(logits(m(x)), y).backward()

    def worst(net):
        g = max(((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-30)).item()
                for p, q in zip(plain.parameters(), net.parameters()))
        b = max(((c - b).norm() / b.norm().clamp_min(1e-30)).item()
                for b, c in zip(plain.buffers(), net.buffers()) if b.is_floating_point())
        return g, b

    (fg, fb), (ug, ub) = worst(fused), worst(unfused)
    # Through 120 random-init BatchNorm layers fp32 rounding differences grow; the PyTorch-op
    # memory-efficient path is the control: the fused path must be as close to plain as it is.
    ok = fg <= 2 * ug + 1e-4 and fb < 1e-4
    print(f"fp32 (TF32 off) densenet121+deeplabv3 OS8 b4 256^2 against plain: worst per-parameter "
          f"relative gradient error fused {fg:.2e}, unfused (control) {ug:.2e}; worst BN buffer error "
          f"fused {fb:.2e}, unfused {ub:.2e} -> {'ok' if ok else 'FAILED'}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return ok


def shapes_batch(gen, n=16, size=256):
    """Random discs and boxes of 4 classes on noise: a task a model learns within 200 iterations."""
    yy, xx = torch.meshgrid(torch.arange(size, device=dev), torch.arange(size, device=dev), indexing="ij")
    img = torch.randn(n, 3, size, size, device=dev, generator=gen) * 0.3
    mask = torch.zeros(n, size, size, dtype=torch.long, device=dev)
    for cls in (1, 2, 3, 4):
        c = torch.randint(32, size - 32, (n, 2), device=dev, generator=gen)
        r = torch.randint(12, 40, (n, 1, 1), device=dev, generator=gen)
        dy, dx = yy[None] - c[:, 0, None, None], xx[None] - c[:, 1, None, None]
        m = (dy.square() + dx.square() < r.square()) if cls % 2 else ((dy.abs() < r) & (dx.abs() < r // 2))
        mask[m] = cls
        col = torch.rand(n, 3, 1, 1, device=dev, generator=gen) * 2 - 1
        img = torch.where(m[:, None], col.expand(-1, -1, size, size), img)
    return img.contiguous(memory_format=torch.channels_last), mask


def loss_curves(iters=200) -> bool:
    gen = torch.Generator(device=dev).manual_seed(0)
    batches = [shapes_batch(gen) for _ in range(20)]
    curves, speed = {}, {}
    for name, kw in (("plain", dict(memory_efficient=False)), ("mem-eff fused", dict(memory_efficient=True, fused=True)),
                     ("mem-eff unfused", dict(memory_efficient=True, fused=False)),
                     ("mem-eff graphed", dict(memory_efficient=True, cuda_graphs=True))):
        m = model(**kw).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(m.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
        losses = []
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for it in range(iters):
            x, y = batches[it % len(batches)]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = logits(m(x))
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.cuda.synchronize()
        speed[name] = iters * 16 / (time.perf_counter() - t0)
        curves[name] = torch.stack(losses).float().cpu()
    print("bf16, 256^2, batch 16, lr 0.02: mean loss over each 20 iterations")
    print("it      " + "  ".join(f"{n:>16}" for n in curves))
    for i in range(0, iters, 20):
        print(f"{i + 20:<7} " + "  ".join(f"{c[i:i + 20].mean():16.4f}" for c in curves.values()))
    print("img/s   " + "  ".join(f"{speed[n]:16.1f}" for n in curves) + "  (includes cudnn autotuning)")
    end = {n: c[-40:].mean().item() for n, c in curves.items()}
    ok = all(abs(end[n] - end["plain"]) <= 0.25 * end["plain"] + 0.02 for n in ("mem-eff fused", "mem-eff graphed"))
    ok = ok and end["plain"] < curves["plain"][:20].mean()
    print(f"final loss (mean of last 40): {end} -> {'ok' if ok else 'FAILED'}")
    return ok


def profile() -> None:
    from torch.profiler import ProfilerActivity, profile as prof

    m = model(True, True).to(memory_format=torch.channels_last).train()
    g = torch.Generator(device=dev).manual_seed(2)
    x = torch.randn(8, 3, 512, 512, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (8, 512, 512), device=dev, generator=g)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = logits(m(x))
        F.cross_entropy(out.float(), y).backward()
        for p in m.parameters():
            p.grad = None

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        step()
        torch.cuda.synchronize()
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    with open(os.path.join(OUT, "profile.txt"), "w") as f:
        f.write(table)
    print("\n".join(table.splitlines()[:22]))


if __name__ == "__main__":
    what = sys.argv[1:] or ["grad", "curve", "profile"]
    ok = True
    if "grad" in what:
        ok &= fp32_gradients()
    if "curve" in what:
        ok &= loss_curves()
    if "profile" in what:
        profile()
    sys.exit(0 if ok else 1)
