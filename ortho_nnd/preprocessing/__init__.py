"""Preprocessing: canonical reorientation, cropping, normalisation, resampling and the way back."""
