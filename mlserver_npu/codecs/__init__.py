"""MLServer codecs for the content types this plugin adds (importing registers them)."""
from .image import ImageCodec, ImageError

__all__ = ["ImageCodec", "ImageError"]
