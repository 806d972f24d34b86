"""int8 through PyTorch 2 export: torch.export, torchao's X86 inductor quantizer,
and torch.compile, which lowers the quantize/dequantize patterns into oneDNN's
int8 linear kernels. The graph says truthfully which linears were quantized."""

from __future__ import annotations

import warnings

import torch

from ..errors import QuantgateError


def x86_quantizer(dynamic: bool = False, reduce_range: bool = False, activation_observer=None,
                  per_channel_weights: bool = True, weight_bits: int = 8, qat: bool = False,
                  symmetric_activations: bool = False):
    """torchao's X86 inductor quantizer: int8 activations (u8, per tensor) and
    signed per-channel weights, with the observer, granularity and weight grid asked for.

    Symmetric activations keep u8 storage (oneDNN's int8 linear wants u8 x s8)
    with the zero point pinned to the middle of the range (128, or 63 with
    reduce_range): one bit of resolution spent to make zero exact and the
    range centred, which suits activations that are roughly symmetric."""
    import dataclasses

    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import MinMaxObserver
    cfg = xiq.get_default_x86_inductor_quantization_config(is_qat=qat, is_dynamic=dynamic, reduce_range=reduce_range)
    if activation_observer is not None and not dynamic:
        spec = dataclasses.replace(cfg.input_activation,
                                   observer_or_fake_quant_ctr=activation_observer.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, input_activation=spec, output_activation=spec)
    if symmetric_activations and not dynamic:
        spec = dataclasses.replace(cfg.input_activation, qscheme=torch.per_tensor_symmetric)
        cfg = dataclasses.replace(cfg, input_activation=spec, output_activation=spec)
    if not per_channel_weights:
        w = dataclasses.replace(cfg.weight, qscheme=torch.per_tensor_symmetric, ch_axis=None,
                                observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        cfg = dataclasses.replace(cfg, weight=w)
    if weight_bits != 8:
        lo, hi = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
        cfg = dataclasses.replace(cfg, weight=dataclasses.replace(cfg.weight, quant_min=lo, quant_max=hi))
    return xiq.X86InductorQuantizer().set_global(cfg)


def reduce_range() -> bool:
    """Without VNNI, u8 x s8 products are summed in int16 and can saturate: use 7-bit activations."""
    return not bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def export(module: torch.nn.Module, example: dict[str, torch.Tensor]) -> torch.fx.GraphModule:
    """Export with a dynamic batch dimension (sequence length is fixed by padding)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    args = (example["input_ids"], example["attention_mask"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(module, args, dynamic_shapes=({0: batch}, {0: batch}), strict=False)
    except Exception as e:
        raise QuantgateError(f"torch.export could not trace this model ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                             "use the dynamic-int8 recipe with backend torch.ao, or a weight-only recipe") from None
    return ep.module()


def prepare(module, example, quantizer, skip: list[str], qat: bool = False):
    """Export, keep `skip` modules in float, insert observers (or fake quantizers for QAT)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e
    gm = export(module, example)
    for name in skip:
        quantizer.set_module_name_qconfig(name, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (prepare_qat_pt2e if qat else prepare_pt2e)(gm, quantizer)


def convert(prepared):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_pt2e(prepared)


def finish(prepared, kept: dict[str, str]) -> tuple["Compiled", list[str]]:
    """Convert to the int8 graph, record linears the quantizer left in float, compile."""
    gm = convert(prepared)
    status = linear_status(gm)
    kept.update({k: "left in float by the PT2E quantizer (no matching pattern)" for k, q in status.items()
                 if not q and k not in kept})
    return Compiled(gm), [k for k, q in status.items() if q]


def linear_status(gm: torch.fx.GraphModule) -> dict[str, bool]:
    """For each linear in the converted graph: module name -> weight is int8."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (torch.ops.aten.linear.default,):
            stack = node.meta.get("nn_module_stack") or {}
            name = list(stack.values())[-1][0] if stack else node.name
            name = name.removeprefix("L['self'].").removeprefix("L__self__.")
            w = node.args[1]
            out[name] = getattr(w, "op", "") == "call_function" and "dequantize" in str(w.target)
    return out


def graph_constants(gm: torch.fx.GraphModule) -> dict[str, torch.Tensor]:
    """The tensors a graph's get_attr nodes read (its weights after conversion)."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part, None)
            if isinstance(obj, torch.Tensor):
                out[node.target] = obj
    return out


class Compiled(torch.nn.Module):
    """A converted graph and its torch.compile'd callable (one compile per input shape)."""

    def __init__(self, gm: torch.fx.GraphModule):
        super().__init__()
        self.gm = gm
        import torch._inductor.config as icfg
        icfg.freezing = True  # fold the int8 weights into oneDNN's packed layout
        self._fn = torch.compile(gm, dynamic=False)

    def forward(self, input_ids, attention_mask):
        # Every call sees plain tensors under no_grad, whatever the caller passes: an inference-mode
        # tensor (e.g. a batch padded inside torch.inference_mode) has another dispatch key set, which
        # fails the compiled graph's guards and costs a second 20-30 s compilation of the same shape.
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # inductor's lowering warns about its own tensor copies
            return self._fn(input_ids.clone(), attention_mask.clone())
