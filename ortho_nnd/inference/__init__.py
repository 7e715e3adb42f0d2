"""Prediction: sliding-window inference, input discovery, model loading and ``ortho_predict``.

Public API: ``predict_sliding_window`` (see ``sliding_window``); the ``ortho_predict`` steps are
``input_discovery.discover_exams``, ``model_loading.load_models`` and ``predictor.run_prediction``.
"""
from ortho_nnd.inference.sliding_window import predict_sliding_window

__all__ = ["predict_sliding_window"]
