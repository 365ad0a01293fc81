"""lmstack.multimodal: tiny, CPU-trainable vision and speech models on data lmstack generates itself.

    images      synthetic pictures (shapes, colours, counts, positions, digits, scenes) with EN/ZH captions
                and visual questions
    vit         ViT (strided-conv patch embedding, class token, position embeddings, lmstack Blocks)
                and a text encoder
    clip        CLIP: symmetric contrastive loss, learnable temperature, zero-shot, retrieval recall@k
    vlm         LLaVA-style image-to-text: ViT -> projector -> lmstack Transformer, staged training
    audio       STFT -> mel filterbank -> log-mel in torch (checked against librosa)
    speech      spoken world sentences (espeak-ng, or a built-in tone alphabet) with noise and voices
    stt         conv (stride 2) + transformer encoder + CTC speech recognizer, WER/CER
    experiment  train and score every part at a named size; ``lmstack multimodal`` is its CLI
"""

from lmstack.multimodal.audio import log_mel, mel_filterbank, mel_spectrogram, power_to_db
from lmstack.multimodal.clip import CLIP, CLIPConfig, clip_loss
from lmstack.multimodal.images import ImageExample, make_image_dataset
from lmstack.multimodal.stt import SpeechRecognizer, STTConfig
from lmstack.multimodal.vit import EncoderConfig, PatchEmbedding, TextEncoder, VisionTransformer
from lmstack.multimodal.vlm import VisionLanguageModel

__all__ = [
    "make_image_dataset", "ImageExample", "EncoderConfig", "PatchEmbedding", "VisionTransformer", "TextEncoder",
    "CLIP", "CLIPConfig", "clip_loss", "VisionLanguageModel", "log_mel", "mel_filterbank", "mel_spectrogram",
    "power_to_db", "SpeechRecognizer", "STTConfig",
]
