"""ortho_nnd: self-configuring three-view diffusion pretraining and fine-tuning for MSK MRI."""

__version__ = "0.1.0"
