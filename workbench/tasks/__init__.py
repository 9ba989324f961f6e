"""One module per task. Each supplies tokenisation, batching and prediction for its task; the
config, the run directory and the training loop are shared (see `workbench.training`)."""

from . import classification

TASK_MODULES = {"text-classification": classification}
