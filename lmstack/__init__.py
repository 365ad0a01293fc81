"""lmstack: the whole large-language-model stack, from raw text to a chat model, in readable Python."""

__version__ = "0.1.0"
