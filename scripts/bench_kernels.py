"""Benchmark the Kronecker backends side by side in one run (results go to BENCHMARKS.md).

Complex KRU with 2×2 factors (applied as the model applies them: merged up to `--merge`, the model's
merge_upto, capped where a backend runs smaller stages faster: ops.merge_limit), modReLU (--nonlinearity),
batch B, length T, forward + backward of the recurrence given the input projection u, for each N:
the fused compiled kernel vs the reference backend vs a dense real `torch.nn.RNN` (tanh, input size 1,
so it is its recurrence too). Also the forward GFLOP/s (16·B·N·log2 N·T flops) against the dense GEMM
rate measured in the same run, the memory a training step at T=1000 keeps for its backward pass
against the stored states (B·T·N·8 bytes), and optionally (--e2e) `krubench task=copy model=kru`
steps/s with model.kernel=reference vs auto. Timings are wall-clock, the best of --repeats rounds;
the candidates of one N run interleaved, so that load from other processes hits them alike.

    python scripts/bench_kernels.py                 # CPU, N in 128 512 1024
    python scripts/bench_kernels.py --device cuda --batch 128 --steps 1000 --sizes 1024
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import torch

from krubench import ops
from krubench.models.kru import random_unitary


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_times(fns: dict, repeats: int, device) -> dict:
    """Best wall time of each callable over `repeats` interleaved rounds (after one warm-up call each)."""
    for f in fns.values():
        f()
    best = {k: math.inf for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t = time.perf_counter()
            f()
            sync(device)
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def gemm_gflops(device, n=2048, repeats=5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = best_times({"mm": lambda: a @ b}, repeats, device)["mm"]
    return 2 * n**3 / t / 1e9


def copy_bandwidth(device, nbytes=2**30) -> float:
    """Bytes moved per second (read + write) by a device-to-device copy."""
    a = torch.empty(nbytes // 4, device=device)
    t = best_times({"copy": lambda: a.clone()}, 5, device)["copy"]
    return 2 * nbytes / t


def kru_problem(N, B, T, merge, device, requires_grad=True):
    k = int(math.log2(N))
    factors = [random_unitary(2, True).to(device).requires_grad_(requires_grad) for _ in range(k)]
    u = torch.randn(B, T, N, dtype=torch.complex64, device=device, requires_grad=requires_grad)
    h0 = torch.zeros(B, N, dtype=torch.complex64, device=device)
    bias = torch.zeros(N, device=device, requires_grad=requires_grad)
    return factors, u, h0, bias, (lambda backend: ops.merge_factors(factors, ops.merge_limit(backend, merge)))


class PlainSum(torch.autograd.Function):
    """Σ Re H, whose backward allocates ∂L/∂H once, as a plain tensor: the kind of gradient the KRU
    model's read-out hands the recurrence (`H.real.sum()` would hand it a view of a real buffer, which
    the compiled backward does not overwrite)."""

    @staticmethod
    def forward(H):
        return H.real.sum() if H.is_complex() else H.sum()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shape, ctx.dtype = inputs[0].shape, inputs[0].dtype

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.dtype).expand(ctx.shape).contiguous()  # ∂(Σ Re H)/∂H = 1 everywhere


def kru_step(kernel, factors, u, h0, bias, stages, backward=True, nonlinearity="modrelu"):
    """One forward (+ backward) of the recurrence on `kernel`: a backend, or "lanes", the C++ kernel on its
    own layout as the KRU model runs it on the CPU (u and h0 converted once, outside the timing)."""
    if kernel == "lanes":
        u = ops.lanes.sequence_to_lanes(u.detach()).requires_grad_(u.requires_grad)
        h0 = ops.lanes.state_to_lanes(h0)

    def run():
        for leaf in (u, bias, *factors):  # as optimizer.zero_grad(set_to_none=True) leaves them
            leaf.grad = None
        if kernel == "lanes":
            H = ops.kru_recurrence_lanes(u, h0, stages("cpp"), nonlinearity, bias)  # (chunks, T, 2, N, LANES)
        else:
            H = ops.kru_recurrence(u, h0, stages(kernel), nonlinearity, bias, kernel=kernel)  # (B, T, N)
        if backward:
            PlainSum.apply(H).backward()
    return run


def lstm_kru_step(kernel, N, B, T, factorisation):
    """A forward+backward of the LSTM+KRU model (real, default config): its whole recurrence in one compiled
    call (`ops.lstm_kru_layer`), or the reference's loop over time."""
    from krubench.models import build_model
    torch.manual_seed(0)
    model = build_model({"name": "lstm_kru", "hidden_size": N, "factorisation": factorisation, "kernel": kernel}, 1, 1)
    x = torch.randn(B, T, 1)

    def run():
        model.zero_grad(set_to_none=True)
        model(x)[0].sum().backward()
    return run


def rnn_step(N, B, T, device):
    rnn = torch.nn.RNN(1, N, batch_first=True).to(device)
    x = torch.randn(B, T, 1, device=device)

    def run():
        rnn.zero_grad(set_to_none=True)
        out, _ = rnn(x)
        out.sum().backward()
    return run


def saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass while `fn` runs forward."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_step_bytes(kernel: str, N: int, B: int, T: int, merge: int) -> int:
    """Peak memory (resident-set high-water mark) that one forward+backward adds, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--peak-child", kernel, str(N), str(B), str(T), str(merge)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}: the peak-memory measurement needs Linux")


def peak_child(kernel: str, N: int, B: int, T: int, merge: int) -> None:
    cpu = torch.device("cpu")
    kru_step(kernel, *kru_problem(N, B, 2, merge, cpu))()  # load the backend, warm the allocator up
    step = kru_step(kernel, *kru_problem(N, B, T, merge, cpu))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current RSS
    base = _status_kib("VmRSS")
    step()
    print((_status_kib("VmHWM") - base) * 1024)


def e2e_steps_per_s(kernel: str, steps: int) -> float:
    """steps/s of `krubench task=copy model=kru` (default settings, `steps` steps), from its log."""
    with tempfile.TemporaryDirectory() as d:
        cmd = [sys.executable, "-m", "krubench.cli", "task=copy", "model=kru", f"model.kernel={kernel}",
               f"trainer.steps={steps}", f"trainer.log_every={steps // 4}", f"trainer.val_every={steps}",
               "trainer.progress=never", f"hydra.run.dir={d}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        out += subprocess.run(["cat", f"{d}/krubench.log"], capture_output=True, text=True).stdout
    rates = [float(r) for r in re.findall(r"([0-9.]+) steps/s", out)]
    return max(rates[1:] or rates)  # the first window includes start-up


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--merge", type=int, default=16, help="merge 2×2 factors up to this size (model.merge_upto)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--nonlinearity", default="modrelu", choices=ops.NONLINEARITIES, help="σ of the KRU (the tables"
                   " of fused vs reference vs nn.RNN; the memory table uses modReLU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--memory-steps", type=int, default=1000, help="T of the memory measurement (0: skip it)")
    p.add_argument("--skip-reference-above", type=int, default=512, help="time the reference only up to this N")
    p.add_argument("--lstm-kru", type=int, default=0, help="also time the LSTM+KRU model at this T (CPU)")
    p.add_argument("--e2e", type=int, default=0, help="also time krubench task=copy model=kru for this many steps")
    p.add_argument("--peak-child", nargs=5, help=argparse.SUPPRESS)  # internal: one step in a fresh process
    args = p.parse_args(argv)
    if args.peak_child:
        kernel, *sizes = args.peak_child
        return peak_child(kernel, *map(int, sizes))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fused = ops.backend_for("auto", device)
    B, T = args.batch, args.steps
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"device {device}{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}; fused backend: {fused}")
    gemm = gemm_gflops(device)
    print(f"# dense GEMM (2048², float32): {gemm:.0f} GFLOP/s; complex KRU, 2×2 factors merged up to {args.merge} "
          f"(the {fused} backend: {ops.merge_limit(fused, args.merge)}), "
          f"{args.nonlinearity}, B={B}, T={T}; best of {args.repeats}; MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}\n")
    # on the CPU the KRU model runs the C++ kernel on its lanes layout; the (B, T, N) API is timed beside it
    main_kernel = "lanes" if fused == "cpp" else fused
    others = ["cpp"] if fused == "cpp" else []
    head = f"| N | {main_kernel} fwd+bwd ms | " + "".join(f"{k} fwd+bwd ms | " for k in others)
    print(head + f"reference ms | nn.RNN ms | {main_kernel} vs reference | {main_kernel} vs RNN | {main_kernel} fwd ms "
          f"| fwd GFLOP/s | % of GEMM | " + "".join(f"{k} fwd % of GEMM | " for k in others))
    print("|---" * (9 + 2 * len(others)) + "|")
    rows = []
    for N in args.sizes:
        factors, u, h0, bias, stages = kru_problem(N, B, T, args.merge, device)
        kernels = [main_kernel, *others]
        step = functools.partial(kru_step, factors=factors, u=u, h0=h0, bias=bias, stages=stages,
                                 nonlinearity=args.nonlinearity)
        fns = {k: step(k) for k in kernels}
        fns["rnn"] = rnn_step(N, B, T, device)
        if N <= args.skip_reference_above:
            fns["reference"] = step("reference")
        with torch.no_grad():
            fwd = best_times({k: step(k, backward=False) for k in kernels},
                             args.repeats, device)
        t = best_times(fns, args.repeats, device)
        ref = t.get("reference", math.nan)
        flops = 16 * B * N * math.log2(N) * T
        share = {k: 100 * flops / fwd[k] / 1e9 / gemm for k in kernels}
        rows.append((N, fwd[main_kernel]))
        m = main_kernel
        print(f"| {N} | {t[m] * 1e3:.1f} | " + "".join(f"{t[k] * 1e3:.1f} | " for k in others)
              + f"{ref * 1e3:.0f} | {t['rnn'] * 1e3:.1f} | {ref / t[m]:.1f}× | {t['rnn'] / t[m]:.2f}× "
              f"| {fwd[m] * 1e3:.2f} | {flops / fwd[m] / 1e9:.0f} | {share[m]:.0f}% | "
              + "".join(f"{share[k]:.0f}% | " for k in others), flush=True)

    if device.type == "cuda":  # the fused forward reads u_t and writes h_t once: 16·B·N bytes per step
        bandwidth = copy_bandwidth(device)
        print(f"\nForward vs the memory-traffic floor 16·B·N·T bytes at the copy bandwidth {bandwidth / 1e12:.2f} TB/s:\n")
        print("| N | fused fwd ms | floor ms | ratio |\n|---|---|---|---|")
        for N, fwd in rows:
            floor = 16 * B * N * T / bandwidth
            print(f"| {N} | {fwd * 1e3:.2f} | {floor * 1e3:.2f} | {fwd / floor:.1f}× |")

    if args.memory_steps:
        print(f"\nMemory of one training step (forward+backward of the recurrence) at T={args.memory_steps}, B={B}: what "
              "autograd keeps for backward, and the peak that the step adds (RSS high-water mark, fresh process, CPU "
              "only), vs the stored states B·T·N·8 bytes:\n")
        print("| N | backend | kept for backward MB | step peak MB | states MB | kept / states | peak / states |")
        print("|---|---|---|---|---|---|---|")
        for N in args.sizes:
            factors, u, h0, bias, stages = kru_problem(N, B, args.memory_steps, args.merge, device)
            states = B * args.memory_steps * N * 8
            kernels = [main_kernel, *others] + (["reference"] if N <= args.skip_reference_above else [])
            for kernel in kernels:
                saved = saved_bytes(kru_step(kernel, factors, u, h0, bias, stages, backward=False))
                peak = peak_step_bytes(kernel, N, B, args.memory_steps, args.merge) if device.type == "cpu" else math.nan
                print(f"| {N} | {kernel} | {saved / 2**20:.0f} | {peak / 2**20:.0f} | {states / 2**20:.0f} "
                      f"| {saved / states:.2f} | {peak / states:.2f} |", flush=True)

    if args.lstm_kru:
        print(f"\nLSTM+KRU (real, unitary init, merged up to 16), forward+backward of the model, B={B}, "
              f"T={args.lstm_kru}: the compiled LSTM+KRU recurrence vs the reference:\n")
        print(f"| N | factorisation | {fused} ms | reference ms | speed-up |\n|---|---|---|---|---|")
        for N in args.sizes:
            for fact in ("per_gate", "joint"):
                t = best_times({k: lstm_kru_step(k, N, B, args.lstm_kru, fact) for k in (fused, "reference")},
                               args.repeats, device)
                print(f"| {N} | {fact} | {t[fused] * 1e3:.1f} | {t['reference'] * 1e3:.1f} "
                      f"| {t['reference'] / t[fused]:.2f}× |", flush=True)

    if args.e2e:
        print(f"\nEnd to end, `krubench task=copy model=kru` (defaults), {args.e2e} steps:\n")
        rates = {k: e2e_steps_per_s(k, args.e2e) for k in ("reference", "auto")}
        print(f"| model.kernel=reference | model.kernel=auto ({fused}) | speed-up |\n|---|---|---|\n"
              f"| {rates['reference']:.1f} steps/s | {rates['auto']:.1f} steps/s | {rates['auto'] / rates['reference']:.1f}× |")


if __name__ == "__main__":
    main()
