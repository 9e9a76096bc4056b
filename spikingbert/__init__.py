"""SpikingBERT: a spiking BERT student trained by implicit differentiation at equilibrium and knowledge distillation.

The public API, importable from this one name (loaded on first use, so ``import spikingbert`` stays light)::

    from spikingbert import SpikingBertForSequenceClassification
    clf = SpikingBertForSequenceClassification.from_pretrained("runs/demo/pred")
    clf.predict("a gorgeous, witty film")

One namespace holds the whole project: ``spikingbert.models`` (the students), ``spikingbert.modules`` (neurons,
spiking blocks, the implicit pass, solvers, the event engine), ``spikingbert.transformer`` (the BERT teacher),
``spikingbert.core`` (errors, settings, files, model directories), ``spikingbert.apps``, and the stages' library
(``spikingbert.run``, ``.cli``, ``.training``, ``.evaluation``, ``.data``, ``.runtime``). In a checkout the first
five are the repository's top-level folders, the published layout; an installed copy holds them here, so an
install puts no generic top-level name (``models``, ``modules``, ...) on other projects' path.

Importing it first lets torch's OpenMP threads sleep when idle (`spikingbert.core.openmp`).
"""
from pathlib import Path as _Path

_CHECKOUT = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "models").is_dir() and (_CHECKOUT / "models" / "spiking_bert.py").is_file():
    __path__.append(str(_CHECKOUT))     # a checkout: spikingbert.models is <repository>/models, and so on

from spikingbert.core.openmp import prefer_passive_waits  # noqa: E402  (found through the path above)

prefer_passive_waits()

__all__ = ["BertConfig", "BertForSequenceClassification", "BertTokenizer", "Prediction", "SpikingBertConfig",
           "SpikingBertForDistillation", "SpikingBertForSequenceClassification", "SpikingBertModel", "StopRule",
           "UserError", "predict"]


def __getattr__(name: str):
    """The public names, imported on first use."""
    if name in ("SpikingBertModel", "SpikingBertForDistillation", "SpikingBertForSequenceClassification"):
        from spikingbert.models import spiking_bert as module
    elif name == "SpikingBertConfig":
        from spikingbert.models import configuration as module
    elif name in ("Prediction", "predict"):
        from spikingbert.models import inference as module
    elif name == "StopRule":
        from spikingbert.models import stopping as module
    elif name == "BertConfig":
        from spikingbert.transformer import configuration as module
    elif name == "BertForSequenceClassification":
        from spikingbert.transformer import modeling as module
    elif name == "BertTokenizer":
        from spikingbert.transformer import tokenization as module
    elif name == "UserError":
        from spikingbert.core import errors as module
    else:
        raise AttributeError(f"module 'spikingbert' has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
