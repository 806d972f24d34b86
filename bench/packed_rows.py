"""Where weight-only layers should stop using the packed kernels: ms per call of one
linear layer, the packed aten kernel (bf16 activations) against dequantize + fp32
matmul, side by side at each call size, and the crossover quantgate measures
(`weight_only.packed_max_rows`) on this CPU.

    .venv/bin/python bench/packed_rows.py
"""

import torch

from quantgate.methods.weight_only import INT4_KERNEL, INT8_KERNEL, ROW_STEPS, WeightOnlyLinear, median_seconds, \
    packed_matmul, packed_max_rows

REPS = 7


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("| layer | format | rows | packed ms | dequantize + fp32 ms | ratio |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    with torch.inference_mode():
        for k, n in [(576, 1536), (2048, 2048)]:
            lin = torch.nn.Linear(k, n, bias=False)
            for name, q in [("int8", WeightOnlyLinear(lin, 8, None, True)), ("int4-g128", WeightOnlyLinear(lin, 4, 128, False))]:
                args = q._packed_args()
                for rows in ROW_STEPS:
                    x = torch.randn(rows, k)
                    a = 1e3 * median_seconds(lambda x: packed_matmul(x, q.packed_kernel, *args, q.group_size, k), x, REPS)
                    b = 1e3 * median_seconds(lambda x: torch.nn.functional.linear(x, q.dequantized_weight()), x, REPS)
                    print(f"| {k} -> {n} | {name} | {rows} | {a:.3f} | {b:.3f} | {b / a:.2f} |")
    for kernel in (INT8_KERNEL, INT4_KERNEL):
        print(f"measured crossover, {kernel}: {packed_max_rows(kernel)} rows")


if __name__ == "__main__":
    main()
