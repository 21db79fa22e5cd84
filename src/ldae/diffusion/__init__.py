"""Noise schedules, prediction targets, loss weights and the objective that composes them."""
from .objective import LOSS_WEIGHTS, SCHEDULES, TARGETS, Denoiser, build_denoiser, check_combination

__all__ = ["SCHEDULES", "TARGETS", "LOSS_WEIGHTS", "Denoiser", "build_denoiser", "check_combination"]
