"""Pretraining: the loop (``loop.py``), one step (``step.py``), the data path (``data.py``),
monitors and the metrics log (``monitoring.py``), checkpoint contents and resume
(``resume.py``). Optimisers and schedules live in ``deeplense_ssl/optim.py``; methods in
``deeplense_ssl/methods/``."""

from .loop import build_method_for, pretrain

__all__ = ["build_method_for", "pretrain"]
