"""Process-wide settings applied when quantgate is imported: offline model
loading, and quiet third-party import chatter that is not the user's concern."""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")            # models come from local paths only
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# torchao tries to load CUDA-only extensions and logs each failure on a CPU machine;
# torch logs a deprecation for enums torchao registers. Neither is actionable.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
