"""Whole-model methods that wrap the layer-wise engine, one folder each (config / math / attach)."""
