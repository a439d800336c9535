"""LoSA: dynamic low-rank sparse adaptation (Huang et al., ICLR 2025).

`config.py` what the user sets · `layer.py` the mask-aligned LoRA layer · `model.py` attaching it ·
`rmi.py` layer sparsity from representation mutual information · `ranks.py` ranks from reconstruction
errors · `schedule.py` the cubic sparsity and rank schedules · `data.py` fine-tuning text ·
`train.py` the fine-tuning loop · `algorithm.py` the progressive stages.
"""

from .algorithm import LosaResult, losa
from .config import LosaConfig
from .layer import LosaLinear
from .model import LosaAdapters

__all__ = ["LosaAdapters", "LosaConfig", "LosaLinear", "LosaResult", "losa"]
