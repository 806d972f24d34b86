"""Process-wide settings applied when quantgate is imported: offline model
loading, and quiet third-party import chatter that is not the user's concern."""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")            # models come from local paths only
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# torch's CPU allocator asks for transparent huge pages for allocations of 2 MB and more. A fresh
# 400 MB activation then costs 200 page faults instead of 100,000: elementwise ops on GPTQ's
# calibration activations ran 2.5-3x faster (measured here). Read once, at torch's first
# allocation: it takes effect when quantgate is imported before torch.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
# torchao tries to load CUDA-only extensions and logs each failure on a CPU machine;
# torch logs a deprecation for enums torchao registers. Neither is actionable.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
