"""The format: manifest, interventions, canonical JSON, the schema, safetensors, the model card.

Bytes and in-memory data only: nothing here touches the file system or
imports an ONNX or machine-learning library.
"""
