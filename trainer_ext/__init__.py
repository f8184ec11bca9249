"""trainer-ext: make Hugging Face text classifiers small and fast without losing their accuracy."""

__version__ = "0.1.0.dev0"
