"""lmstack.export: formats for other runtimes. ``gguf`` writes llama.cpp's GGUF (F32, F16, Q8_0, Q4_0).

The Hugging Face transformers format lives in ``lmstack.model.hf`` (``lmstack hf``).
"""
