"""vaefusion: multimodal neuroimaging fusion with one shared 3D variational autoencoder."""

__version__ = "0.1.0"
__all__ = ["__version__"]
