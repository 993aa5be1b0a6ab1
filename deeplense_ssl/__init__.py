"""deeplense_ssl: self-supervised learning for strong gravitational lensing images."""

__version__ = "0.1.0"
