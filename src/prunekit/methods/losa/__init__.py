"""LoSA: dynamic low-rank sparse adaptation (Huang et al., ICLR 2025).

`config.py` what the user sets · `layer.py` the mask-aligned LoRA layer · `model.py` attaching it ·
`rmi.py` layer sparsity from representation mutual information · `ranks.py` ranks from reconstruction
errors · `schedule.py` the cubic sparsity and rank schedules · `data.py` fine-tuning text ·
`train.py` the fine-tuning loop · `algorithm.py` the progressive stages.
"""

from .config import LosaConfig
from .layer import LosaLinear
from .model import LosaAdapters


def __getattr__(name):  # the algorithm imports the engine, which imports the pruners: load it on use
    if name in ("losa", "LosaResult"):
        from . import algorithm

        return getattr(algorithm, name)
    raise AttributeError(name)

__all__ = ["LosaAdapters", "LosaConfig", "LosaLinear", "LosaResult", "losa"]
