"""Applications built on the `spikingbert` library: the demo (``python -m apps.demo``), teacher
fine-tuning (``python -m apps.finetune``), the demo's corpus builders (``python -m apps.corpora``) and the import of
published checkpoints (``python -m apps.convert_published``).

They sit above the library: they import `spikingbert`, `models` and `transformer`; nothing there imports them.
"""

import spikingbert  # noqa: F401  (first: its import lets OpenMP threads sleep, spikingbert.core.openmp)
