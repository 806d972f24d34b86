"""The matrix products of GPTQ's calibration forward, torch (MKL) against
numpy (OpenBLAS), side by side in one run: SmolLM2's seven projections at
65,536 rows (128 windows x 512 tokens), and the down projection's Hessian
(X^T X, 1536 wide) as torch's full product against BLAS's ssyrk half product.

    .venv/bin/python bench/gemm_backends.py

Prints GFLOPS per shape and the seconds per block for each backend (medians
of 5 runs after a warm-up)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import quantgate  # noqa: E402,F401  (process settings before torch)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.linalg import blas  # noqa: E402

ROWS = 65536
SHAPES = [("q_proj, o_proj", 576, 576, 2), ("k_proj, v_proj", 576, 192, 2), ("gate_proj, up_proj", 576, 1536, 2),
          ("down_proj", 1536, 576, 1)]


def median_s(f, n=5):
    f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2]


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}")
    per_block = {"torch": 0.0, "numpy": 0.0}
    for name, k, n, count in SHAPES:
        x, w = torch.randn(ROWS, k), torch.randn(n, k)
        xn, wn = x.numpy(), w.numpy()
        flop = 2 * ROWS * k * n
        a = median_s(lambda: torch.nn.functional.linear(x, w))
        b = median_s(lambda: xn @ wn.T)
        per_block["torch"] += a * count
        per_block["numpy"] += b * count
        print(f"{name:20s} {k:5d} -> {n:5d}: torch {flop / a / 1e9:5.0f} GFLOPS, numpy {flop / b / 1e9:5.0f} "
              f"GFLOPS ({a / b:.2f}x)")
    print(f"one block's projections: torch {per_block['torch']:.2f} s, numpy {per_block['numpy']:.2f} s "
          f"({per_block['torch'] / per_block['numpy']:.2f}x)")
    x = torch.randn(ROWS, 1536)
    half = ROWS * 1536 * 1536          # flops of the half product (the useful work)
    a = median_s(lambda: x.T @ x)
    b = median_s(lambda: blas.ssyrk(1.0, x.numpy().T, trans=0))
    print(f"Hessian 1536 wide: torch full product {a:.2f} s, ssyrk {b:.2f} s ({a / b:.2f}x; "
          f"{half / b / 1e9:.0f} GFLOPS of useful work)")


if __name__ == "__main__":
    main()
