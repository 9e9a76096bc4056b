"""Applications built on the `spikingbert` library: the demo (``python -m apps.demo``), teacher
fine-tuning (``python -m apps.finetune``) and the demo's corpus builders (``python -m apps.corpora``).

They sit above the library: they import `spikingbert`, `models` and `transformer`; nothing there imports them.
"""
