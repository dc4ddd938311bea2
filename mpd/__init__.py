"""mpd: the solid-extended metriplectic particle model and the pipeline's shared plumbing.

Importing ``mpd`` does not import torch: the tracking and twin stages use
``mpd.config`` without the model's dependencies.
"""
__version__ = "0.1.0"
