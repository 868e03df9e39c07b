"""The Python phases of scripts/gpu_check.sh; each prints one Markdown table (or section) on stdout.

    python scripts/gpu_check.py preflight   # versions and tools: torch, CUDA, cuDNN, driver, nvcc, ninja, ...
    python scripts/gpu_check.py large       # N 1024/2048/4096 × B 133/257 × T 200: complex64 vs complex128, vs cpp
    python scripts/gpu_check.py sanitize    # a tiny forward+backward of every CUDA kernel (run under compute-sanitizer)
    python scripts/gpu_check.py bench       # forward and backward vs nn.RNN (cuDNN) and the HBM floor: 2×2 factors
                                            # (N 128/512/1024) and the paper's music and PTB factor shapes
    python scripts/gpu_check.py e2e         # a training step of the pixel MNIST and PTB KRU presets: steps/s

--dry-run runs a phase on the CPU at tiny sizes, the cpp backend standing in for cuda, so that the script
can be checked without a GPU (tests/test_bench_kernels.py does); the register-resident forward, CUDA only,
then runs in the emulator (cuda/kru_emu.h). The KRU runs as training runs it: its factors handed to the
recurrence as the KRU layer hands them (ops.layer.recurrence_stages: 2×2 factors unmerged where the CUDA
recurrence runs them register-resident, else merged up to 16), modReLU on complex states, the kernel the
operator chose named in the table; 2×2 rows also time the fused kernel on factors merged up to 16 (what ran
before the register-resident kernels were dispatched), rows that run tiled (PTB) the fused kernels on the same
factors (KRUBENCH_CUDA_TILED_ENTRIES past their size: what ran before the tiled kernels were dispatched). nn.RNN is dense, real, tanh, input size 1 (its
recurrence, as the KRU's u is given). Times: best of --repeats rounds after a warm-up, each round a forward
then a backward (with a plain upstream gradient) timed apart.
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # krubench from this checkout
from krubench import ops  # noqa: E402
from krubench.models.kru import random_unitary  # noqa: E402
from krubench.ops import build, dispatch  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_row(row: list) -> None:
    """One row of a table whose heading is already printed, at once: a phase cut off by its timeout still
    leaves the rows it finished (the first GPU run's bench and large phases left none)."""
    print(table([], [row]).split("\n", 2)[-1], flush=True)


def _command_version(cmd: list[str]) -> str:
    exe = shutil.which(cmd[0])
    if exe is None:
        return "MISSING"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{exe} (no version: {e})"
    return f"{exe}: {out[-1] if out else '?'}"


def preflight(args) -> int:
    """What the build and the run need. Returns 1 when something needed is missing (not in a dry run)."""
    rows, missing = [], []

    def row(what, value, needed=True):
        rows.append([what, value])
        if needed and str(value).startswith("MISSING"):
            missing.append(what)

    row("python", f"{platform.python_version()} ({sys.executable})")
    row("torch", f"{torch.__version__}, built for CUDA {torch.version.cuda}, cuDNN "
                 f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'MISSING'}",
        needed=not args.dry_run)
    for module in ("pytest", "filelock", "ninja", "omegaconf"):
        try:
            row(f"python module {module}", getattr(importlib.import_module(module), "__version__", "present"))
        except ImportError:
            row(f"python module {module}", "MISSING", needed=module in ("pytest", "filelock"))
    row("ninja", _command_version(["ninja", "--version"]))
    row("nvcc", _command_version(["nvcc", "--version"]), needed=not args.dry_run)
    from torch.utils import cpp_extension
    row("CUDA_HOME", cpp_extension.CUDA_HOME or "MISSING", needed=not args.dry_run)
    try:
        row("libcudart", str(build.cudart_dir(cpp_extension.CUDA_HOME or "/nonexistent") / "libcudart.so"))
    except build.BuildError as e:
        row("libcudart", f"MISSING ({e})", needed=not args.dry_run)
    row("compute-sanitizer", _command_version(["compute-sanitizer", "--version"]), needed=False)
    smi = shutil.which("nvidia-smi")
    driver = "MISSING"
    if smi:
        driver = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip() or "?"
    row("GPU, driver (nvidia-smi)", driver, needed=not args.dry_run)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        row("device", f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
                      f"{p.total_memory / 2**30:.0f} GiB, shared memory opt-in "
                      f"{getattr(p, 'shared_memory_per_block_optin', '?')} B/block")
        row("TORCH_CUDA_ARCH_LIST", os.environ.get("TORCH_CUDA_ARCH_LIST", "unset"))
        row("cuDNN allow_tf32 (nn.RNN may use TF32)", torch.backends.cudnn.allow_tf32)
    else:
        row("device", "MISSING (no CUDA device)", needed=not args.dry_run)
    print("### Preflight\n\n" + table(["what", "found"], rows))
    if missing:
        print(f"\nmissing: {', '.join(missing)}")
    return 1 if missing and not args.dry_run else 0


SHAPES = {  # the paper's KRUs other than 2×2: factor sizes, complex
    "music": ([2, 2, 5, 5], False),   # JSB etc., N = 100, real
    "ptb411": ([3, 137], True),       # PTB char, Table 3
    "ptb993": ([3, 331], True),
}


def kru_problem(N, B, T, seed=0, sizes=None, merge=1):
    """Factors (`sizes`, default 2×2 ones; neighbours merged up to `merge`), u, h0, the modReLU bias and an
    upstream gradient: complex128 (float64 bias) on the CPU; `on` casts them for a run."""
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [2] * int(math.log2(N))
    stages = ops.merge_factors([random_unitary(n, True, g).to(torch.complex128) for n in sizes], merge)
    u = torch.randn(B, T, N, dtype=torch.complex128, generator=g)
    h0 = 0.5 * torch.randn(B, N, dtype=torch.complex128, generator=g)
    bias = -0.1 * torch.rand(N, dtype=torch.float64, generator=g)
    grad = torch.randn(B, T, N, dtype=torch.complex128, generator=g)
    return stages, u, h0, bias, grad


def on(problem, device, dtype=torch.complex64):
    """The problem in `dtype` on `device`, leaves requiring gradients; real dtypes take the real parts."""
    stages, u, h0, bias, grad = problem

    def cast(t, leaf=True):
        t = t if dtype.is_complex else t.real
        return t.to(device, dtype).contiguous().requires_grad_(leaf)
    return ([cast(s) for s in stages], cast(u), cast(h0), bias.to(device, dtype.to_real()).requires_grad_(),
            cast(grad, leaf=False))


def recurrence_results(backend, stages, u, h0, bias, grad):
    """H and the gradients (u, h0, bias, stages), on the CPU in complex128."""
    H = ops.kru_recurrence(u, h0, stages, "modrelu", bias, kernel=backend)
    grads = torch.autograd.grad(H, [u, h0, bias, *stages], grad)
    return [t.detach().cpu().to(torch.complex128) for t in (H, *grads)]


def regs_forward(problem, device, nonlinearity="modrelu"):
    """The register-resident forward (`kru_recurrence_regs`, CUDA only: 2×2 factors; on the CPU the emulator's,
    cuda/kru_emu.h) on `problem`'s data: its random 2×2 factors, and a function that runs it."""
    from krubench.ops import compiled
    if torch.device(device).type == "cpu":
        build.build("emu")
    lib = torch.ops.krubench if torch.device(device).type == "cuda" else torch.ops.krubench_emu
    stages, u, h0, bias, _ = problem
    k = int(math.log2(u.shape[-1]))
    g = torch.Generator().manual_seed(0)
    factors = [random_unitary(2, True, g) for _ in range(k)]
    w, shapes = compiled._pack(factors, torch.complex64)
    args = (u.detach().to(device, torch.complex64).contiguous(), h0.detach().to(device, torch.complex64).contiguous(),
            w.to(device), shapes, nonlinearity, bias.detach().to(device, torch.float32))
    return factors, (lambda: lib.kru_recurrence_regs(*args))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def large(args) -> int:
    """complex64 and complex128 on the device backend, complex64 on cpp: the largest relative error over H
    and every gradient. Pass: the device's complex64 error at most 2× cpp's + 1e-6 (STYLE.md's rule)."""
    backend, device = ("cpp", "cpu") if args.dry_run else ("cuda", "cuda")
    sizes, batches, T = ([64, 256], [3, 5], 6) if args.dry_run else (args.sizes, args.batches, args.steps)
    failed = 0
    print(f"### Large sizes ({backend}, complex64 vs complex128 on {device}; cpp complex64 vs the same)\n\n" +
          table(["N", "B", "T", f"{backend} c64 rel. err", "cpp c64 rel. err", "verdict", "s"], []), flush=True)
    for N in sizes:
        for B in batches:
            started = time.perf_counter()
            problem = kru_problem(N, B, T)
            dev64 = recurrence_results(backend, *on(problem, device, torch.complex64))
            dev128 = recurrence_results(backend, *on(problem, device, torch.complex128))
            cpp64 = recurrence_results("cpp", *on(problem, "cpu", torch.complex64))
            del problem
            e_dev = max(rel_err(a, b) for a, b in zip(dev64, dev128))
            e_cpp = max(rel_err(a, b) for a, b in zip(cpp64, dev128))
            ok = e_dev <= 2 * e_cpp + 1e-6
            failed += not ok
            print_row([N, B, T, f"{e_dev:.2e}", f"{e_cpp:.2e}", "ok" if ok else "FAIL",
                       f"{time.perf_counter() - started:.1f}"])
    return 1 if failed else 0


def sanitize(args) -> int:
    """Every kernel once, tiny: recurrence forward+backward (complex and real, the three nonlinearities)
    and the register-resident forward, checked against the reference; for compute-sanitizer to watch."""
    backend, device = ("cpp", "cpu") if args.dry_run else ("cuda", "cuda")
    worst = 0.0
    problem = kru_problem(64, 2, 3, seed=1)
    tiled = kru_problem(111, 3, 3, seed=1, sizes=[3, 37])  # the tiled kernels (a 37×37 factor)
    for dtype, nl, case in itertools.product((torch.complex64, torch.float32), ops.NONLINEARITIES, (problem, tiled)):
        stages, u, h0, bias, grad = on(case, device, dtype)
        H = ops.kru_recurrence(u, h0, stages, nl, bias, kernel=backend)
        torch.autograd.grad(H, [u, h0, bias, *stages], grad)
        ref = ops.kru_recurrence(u, h0, stages, nl, bias, kernel="reference")
        worst = max(worst, rel_err(H.detach().cpu(), ref.detach().cpu()))
    factors, run = regs_forward(problem, device)  # the register-resident forward (dry run: the emulator's)
    stages, u, h0, bias, _ = on(problem, device)
    ref = ops.kru_recurrence(u, h0, [f.to(device) for f in factors], "modrelu", bias, kernel="reference")
    worst = max(worst, rel_err(run().cpu(), ref.detach().cpu()))
    sync(torch.device(device))
    print(f"sanitize case ({backend}{', register-resident forward emulated' if args.dry_run else ''}): every kernel ran; largest relative error vs the reference {worst:.1e}")
    return 0 if worst < 1e-4 else 1


def fwd_bwd_times(forward, grad, repeats: int, device) -> tuple[float, float]:
    """Best forward and best backward time (s): each round runs forward, then backward(grad), timed apart."""
    best_f = best_b = math.inf
    for i in range(repeats + 1):  # the first round warms up
        sync(device)
        t0 = time.perf_counter()
        out = forward()
        sync(device)
        t1 = time.perf_counter()
        out.backward(grad)
        sync(device)
        t2 = time.perf_counter()
        if i:
            best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
        del out
    return best_f, best_b


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def copy_bandwidth(device, nbytes=2**30) -> float:
    """Bytes moved per second (read + write) by a device-to-device copy: the memory roof."""
    a = torch.empty(nbytes // 4, device=device)
    best = math.inf
    for _ in range(4):
        sync(device)
        t = time.perf_counter()
        a.clone()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def cudnn_kernels(rnn, x) -> str:
    """The GPU kernels one nn.RNN forward launches (profiler names), shortened: says which cuDNN algorithm
    ran (persistent kernels carry 'persist' in their names; the standard one runs GEMMs and elementwise)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        rnn(x)
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
    persistent = any("persist" in n.lower() for n in names)
    short = ", ".join(n.split("(")[0][:40] for n in names[:3])
    return f"{'persistent' if persistent else 'standard'}: {short}"


def bench_specs(args) -> list[tuple[str, list[int], bool]]:
    """(name, factor sizes, complex) of the rows: 2×2 complex factors for each of --sizes, then --shapes."""
    specs = [(f"N={N}, 2×2", [2] * int(math.log2(N)), True) for N in args.sizes]
    return specs + [(f"{name}, {'×'.join(map(str, SHAPES[name][0]))}", *SHAPES[name]) for name in args.shapes]


def bench(args) -> int:
    from krubench.ops.layer import recurrence_stages
    backend, device = ("cpp", "cpu") if args.dry_run else ("cuda", "cuda")
    device = torch.device(device)
    batches, T = ([2, 5], 10) if args.dry_run else (args.batches, args.steps)
    specs = bench_specs(argparse.Namespace(sizes=[16, 64], shapes=["music"]) if args.dry_run else args)
    bw = copy_bandwidth(device, 2**24 if args.dry_run else 2**30)
    print(f"### KRU ({backend}) vs nn.RNN on {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}: "
          f"ms, best of {args.repeats}; memory roof {bw / 1e9:.0f} GB/s (device copy)\n\n" +
          table(["factors", "B", "T", "kernel", "KRU fwd", "KRU bwd", "RNN fwd", "RNN bwd", "RNN/KRU fwd",
                 "RNN/KRU fwd+bwd", "KRU fwd / HBM floor", "KRU bwd / HBM floor",
                 "fused fwd+bwd (2×2: merged up to 16; tiled: same factors)", "cuDNN algorithm (kernels)"], []),
          flush=True)
    for name, sizes, complex_ in specs:
        N, dtype = math.prod(sizes), torch.complex64 if complex_ else torch.float32
        for B in batches:
            problem = kru_problem(N, B, T, sizes=sizes)
            stages, u, h0, bias, grad = on(problem, device, dtype)
            stages = [f.detach().requires_grad_() for f in recurrence_stages(stages, backend, 16, dtype)]  # as the layer
            # hands them over (merged ones made leaves: each round's backward ends at them)
            kernel = (dispatch.cuda_recurrence_kernel(tuple(f.shape[0] for f in stages), dtype, device)
                      if device.type == "cuda" else backend)
            kf, kb = fwd_bwd_times(lambda: ops.kru_recurrence(u, h0, stages, "modrelu", bias, kernel=backend), grad,
                                   args.repeats, device)
            del stages, u, h0, bias, grad
            fused = "n/a"
            if set(sizes) == {2}:  # the fused kernel on merged factors, as before the register-resident dispatch
                stages, u, h0, bias, grad = on(kru_problem(N, B, T, sizes=sizes, merge=16), device, dtype)
                ff, fb = fwd_bwd_times(lambda: ops.kru_recurrence(u, h0, stages, "modrelu", bias, kernel=backend),
                                       grad, args.repeats, device)
                fused = f"{(ff + fb) * 1e3:.2f} ms ({(ff + fb) / (kf + kb):.1f}× the KRU's)"
                del stages, u, h0, bias, grad
            elif kernel == "tiled":  # the fused kernels on the same factors, as before the tiled dispatch
                os.environ["KRUBENCH_CUDA_TILED_ENTRIES"] = str(2 ** 62)
                try:
                    stages, u, h0, bias, grad = on(problem, device, dtype)
                    ff, fb = fwd_bwd_times(lambda: ops.kru_recurrence(u, h0, stages, "modrelu", bias, kernel=backend),
                                           grad, args.repeats, device)
                finally:
                    del os.environ["KRUBENCH_CUDA_TILED_ENTRIES"]
                fused = f"{(ff + fb) * 1e3:.2f} ms ({(ff + fb) / (kf + kb):.1f}× the KRU's)"
                del stages, u, h0, bias, grad
            del problem
            rnn = torch.nn.RNN(1, N, batch_first=True).to(device)
            x = torch.randn(B, T, 1, device=device)
            rf, rb = fwd_bwd_times(lambda: rnn(x)[0], torch.randn(B, T, N, device=device), args.repeats, device)
            algo = cudnn_kernels(rnn, x) if device.type == "cuda" else "n/a (CPU)"
            del rnn, x
            width = 8 if complex_ else 4  # bytes an element
            floor_f = 2 * width * B * N * T / bw  # read u_t, write h_t once per step
            floor_b = 3 * width * B * N * T / bw  # read H_t and ∂L/∂H_t, write ∂L/∂u_t
            print_row([name, B, T, kernel, f"{kf * 1e3:.2f}", f"{kb * 1e3:.2f}", f"{rf * 1e3:.2f}", f"{rb * 1e3:.2f}",
                       f"{rf / kf:.2f}×", f"{(rf + rb) / (kf + kb):.2f}×", f"{kf / floor_f:.1f}×",
                       f"{kb / floor_b:.1f}×", fused, algo])
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print("\nHBM floor: forward 2·B·N elements a step (u_t in, h_t out), backward 3·B·N (H_t and ∂L/∂H_t in, ∂L/∂u_t "
          "out), 8 bytes an element complex, 4 real, at the measured copy bandwidth. RNN/KRU > 1: the KRU is faster.")
    return 0


E2E = {  # the paper presets' KRUs without Hydra (the device has no omegaconf): model, input and output size,
    # batch, T, read-out at the last step only, the preset's trainer.steps (conf/experiment/paper/*.yaml)
    "pixel_mnist_kru": (dict(name="kru", hidden_size=512, factor_size=2), 1, 10, 100, 784, True, 35200),
    "ptb_char_kru": (dict(name="kru", hidden_size=411, factors=[3, 137]), 50, 50, 128, 150, False, 5220),
    "ptb_char_kru_n993": (dict(name="kru", hidden_size=993, factors=[3, 331]), 50, 50, 128, 150, False, 5220),
}


def e2e(args) -> int:
    """A training step of each preset's KRU on synthetic data of the task's shapes: forward, cross-entropy, backward,
    gradient clipping, RMSprop (the presets' optimizer); steps/s and the preset's full run at that rate."""
    from krubench.models import build_model
    device = torch.device("cpu" if args.dry_run else "cuda")
    print(f"### A training step of the paper presets' KRUs ({device.type}, synthetic data of the task's shapes)\n\n"
          + table(["preset", "B", "T", "recurrence kernel", "ms a step", "steps/s", "the preset's steps at this rate"],
                  []), flush=True)
    for preset, (cfg, I, O, B, T, last_only, steps) in E2E.items():
        if args.dry_run:
            B, T = 4, 12
        torch.manual_seed(0)
        model = build_model({**cfg, "kernel": "auto"}, I, O).to(device)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        x = torch.randn(B, T, I, device=device)
        target = torch.randint(O, (B, 1 if last_only else T), device=device)

        def step():
            y, _ = model(x, None, last_only)
            loss = torch.nn.functional.cross_entropy(y.reshape(-1, O), target.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        step()  # warm-up (and the build)
        best = min(timed(step, device) for _ in range(args.repeats))
        factors = list(model.W.factors)
        kernel = (dispatch.cuda_recurrence_kernel(tuple(f.shape[0] for f in factors), factors[0].dtype, device)
                  if device.type == "cuda" else "cpp")
        print_row([preset, B, T, kernel, f"{best * 1e3:.1f}", f"{1 / best:.1f}", f"{steps * best / 60:.1f} min"])
        del model, opt, x, target
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["preflight", "large", "sanitize", "bench", "e2e"])
    p.add_argument("--dry-run", action="store_true", help="on the CPU at tiny sizes, cpp standing in for cuda")
    p.add_argument("--sizes", type=int, nargs="+", help="N (default: large 1024 2048 4096, bench 128 512 1024)")
    p.add_argument("--batches", type=int, nargs="+", help="B (default: large 133 257, bench 32 128 1024)")
    p.add_argument("--steps", type=int, help="T (default: large 200, bench 1000)")
    p.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES),
                   help="bench: the paper's other factor shapes to time after --sizes (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    defaults = {"large": ([1024, 2048, 4096], [133, 257], 200), "bench": ([128, 512, 1024], [32, 128], 1000)}
    if args.phase in defaults:
        sizes, batches, steps = defaults[args.phase]
        args.sizes, args.batches, args.steps = args.sizes or sizes, args.batches or batches, args.steps or steps
    if not args.dry_run and args.phase != "preflight" and not torch.cuda.is_available():
        print(f"{args.phase}: no CUDA device (use --dry-run to check the script on the CPU)", file=sys.stderr)
        return 2
    if args.phase != "preflight" and dispatch.load("cpp" if args.dry_run else "cuda") is not None:
        return 2
    return {"preflight": preflight, "large": large, "sanitize": sanitize, "bench": bench, "e2e": e2e}[args.phase](args)


if __name__ == "__main__":
    raise SystemExit(main())
