"""Whole-model methods that wrap the layer-wise engine, one folder each, split like peft:
`config.py` (what the user sets), the math (`layer.py`, ...), and how it attaches to a model (`model.py`)."""
