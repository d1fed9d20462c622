"""Feature extraction from raw videos: ``vidlang extract VIDEOS --backbone NAME --out STORE``.

:func:`extract_features` decodes videos with PyAV, samples frames (:class:`Sampling`), runs a
:class:`Backbone` over them and writes an npy-folder store that :func:`vidlang.data.features.open_store`
reads directly.
"""
from vidlang.extract.backbones import Backbone, ClipBackbone, ResNetBackbone, TinyBackbone, default_backbone, load_backbone
from vidlang.extract.efficientnet import EfficientNetLite0Backbone
from vidlang.extract.run import extract_features, format_summary
from vidlang.extract.video import Sampling, decode_video, list_videos

__all__ = ["extract_features", "format_summary", "load_backbone", "Backbone", "TinyBackbone", "ClipBackbone",
           "ResNetBackbone", "EfficientNetLite0Backbone", "default_backbone", "Sampling", "decode_video", "list_videos"]
