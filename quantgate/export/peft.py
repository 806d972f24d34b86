"""A QLoRA artifact's adapters as a standard peft adapter directory:
`adapter_config.json` (written by peft's own LoraConfig, with `peft_type`,
`task_type` and the base model's path) and `adapter_model.safetensors` with
peft's key names. `PeftModel.from_pretrained(base, DIR)` reads it; on the
artifact's NF4 base (`quantgate.artifact.load_lm(ARTIFACT, adapters=False)`)
the result is bit-identical to the artifact, and on the fp32 base it is the
adapters over unquantized weights."""

from __future__ import annotations

from ..errors import require

NAME = "peft"
KIND = "causal-lm"
RUNTIMES = "peft (PeftModel.from_pretrained), transformers with peft installed"
FILE = "adapter_model.safetensors"


def check(src) -> None:
    require(src.manifest.get("adapters"), "this artifact has no LoRA adapters to export as peft (only QLoRA artifacts "
                                      "saved without merge: true do); export its weights as compressed-tensors or gguf")


def write(src, folder) -> dict:
    lm, manifest = src.model, src.manifest
    from safetensors.torch import save_file

    from ..methods.qlora import lora_config
    cfg = lora_config(manifest["adapters"])
    cfg.task_type = "CAUSAL_LM"
    cfg.base_model_name_or_path = manifest["base_model"]["path"]
    cfg.save_pretrained(str(folder))
    state = {}
    for k, v in lm.module.state_dict().items():
        if "lora_" in k:      # <module>.lora_A.default.weight -> base_model.model.<module>.lora_A.weight
            state["base_model.model." + k.replace(".default.", ".")] = v.detach().contiguous().clone()
    save_file(state, str(folder / FILE), metadata={"format": "pt"})
    return {"files": ["adapter_config.json", FILE], "adapters": len(state) // 2, "notes": []}
