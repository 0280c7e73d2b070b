"""Datasets: DAVIS readers and writers, palette PNG I/O, synthetic DAVIS-style videos, flow I/O."""
