"""ldae: latent Denoising Autoencoders, after Chen, Liu, Xie & He, "Deconstructing Denoising
Diffusion Models for Self-Supervised Learning" (2024)."""
__version__ = "0.1.0"
