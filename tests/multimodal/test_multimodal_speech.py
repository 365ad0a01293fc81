"""Speech data and speech-to-text: transcripts, CTC decoding, conv lengths, a tiny training run, espeak-ng."""

import numpy as np
import pytest
import torch

from lmstack.multimodal.common import error_rate
from lmstack.multimodal.speech import (TONES_TRAIN_VOICES, add_noise, espeak_available, make_speech_dataset,
                                       read_wav, split_sentences, synthesize_espeak, synthesize_tones,
                                       world_sentences)
from lmstack.multimodal.stt import (ALPHABET, STTConfig, SpeechRecognizer, ctc_greedy_decode, encode_transcript,
                                    evaluate_stt, normalize_transcript, pad_features, train_stt,
                                    utterance_features)

needs_espeak = pytest.mark.skipif(not espeak_available(),
                                  reason="espeak-ng is not installed (apt-get install -y espeak-ng); "
                                         "the tone synthesizer covers the STT pipeline meanwhile")


def test_sentences_split_without_overlap():
    sents = world_sentences()
    assert len(sents) == len(set(sents)) > 500
    assert all(normalize_transcript(s) == s for s in sents)  # already in the STT alphabet
    train, test = split_sentences(sents, 0.15, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(sents)
    assert split_sentences(sents, 0.15, seed=0) == (train, test)


def test_transcripts_and_greedy_ctc():
    assert normalize_transcript("The Digit 7,  in RED!") == "the digit seven in red"
    assert encode_transcript("ab ") == [ALPHABET.index("a") + 1, ALPHABET.index("b") + 1]
    a, b = ALPHABET.index("a") + 1, ALPHABET.index("b") + 1
    frames = [0, a, a, 0, a, b, b, 0, 0]  # blank separates the doubled 'a'; repeats collapse
    log_probs = torch.log(torch.nn.functional.one_hot(torch.tensor([frames]), len(ALPHABET) + 1).float() + 1e-6)
    assert ctc_greedy_decode(log_probs, torch.tensor([len(frames)])) == ["aab"]
    assert ctc_greedy_decode(log_probs, torch.tensor([3])) == ["a"]


def test_tone_synthesis_and_noise():
    rng = np.random.default_rng(0)
    w1, sr = synthesize_tones("ab c", "tone-1.0-a", 0.05, rng)
    w2, _ = synthesize_tones("ab c", "tone-1.2-c", 0.05, np.random.default_rng(0))
    assert sr == 16000 and w1.dtype == np.float32 and np.abs(w1).max() <= 1
    spec1, spec2 = np.abs(np.fft.rfft(w1)), np.abs(np.fft.rfft(w2))
    assert np.argmax(spec2) > np.argmax(spec1)  # a higher-pitched voice
    noisy = add_noise(w1, 10.0, rng)
    snr = 10 * np.log10(np.mean(w1 ** 2) / np.mean((noisy - w1) ** 2))
    assert 8.5 < snr < 11.5
    with pytest.raises(ValueError, match="cannot say"):
        synthesize_tones("a7", "tone-1.0-a", 0.05, rng)
    with pytest.raises(ValueError, match="tone voice"):
        synthesize_tones("a", "robot", 0.05, rng)


def test_conv_front_end_halves_frames_and_masks_padding():
    torch.manual_seed(0)
    model = SpeechRecognizer(STTConfig(n_mels=16, d_model=32, n_layers=1, n_heads=4, dropout=0.0)).eval()
    for t in (1, 2, 9, 10, 101):
        log_probs, lengths = model(torch.randn(1, 16, t), torch.tensor([t]))
        assert log_probs.shape[1] == int(lengths[0]) == (t + 1) // 2
    x = torch.randn(1, 16, 20)
    short, _ = model(x, torch.tensor([20]))
    padded, _ = model(torch.cat([x, torch.randn(1, 16, 6)], 2), torch.tensor([20]))
    torch.testing.assert_close(padded[:, :10], short, rtol=1e-4, atol=1e-5)  # padding changes nothing
    with pytest.raises(ValueError, match="mels"):
        model(torch.randn(1, 8, 20), torch.tensor([20]))


def test_tiny_stt_learns_the_tone_alphabet():
    sentences = ["a red circle", "two blue squares", "the digit one in green"]
    train = make_speech_dataset(sentences, TONES_TRAIN_VOICES[:2], 24, seed=0, snr_db=(25, 30))
    torch.manual_seed(0)
    model = SpeechRecognizer(STTConfig(n_mels=24, d_model=48, n_layers=1, n_heads=4, dropout=0.0))
    before = evaluate_stt(model, train[:8])
    log = train_stt(model, train, steps=90, batch_size=12, lr=3e-3, augment=False, progress=False)
    after = evaluate_stt(model, train[:8])
    assert log["losses"][-1] < 0.5 * log["losses"][0]
    assert after["cer"] < 0.5 and after["cer"] < before["cer"]
    feats, frames = pad_features([utterance_features(e, 24) for e in train[:2]])
    assert feats.shape[0] == 2 and int(frames.max()) == feats.shape[2]


def test_read_wav_round_trip(tmp_path):
    import wave

    pcm = (np.sin(np.arange(800) / 5) * 20000).astype("<i2")
    path = tmp_path / "x.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())
    audio, rate = read_wav(path.read_bytes())
    assert rate == 8000 and np.allclose(audio, pcm / 32768.0)


@needs_espeak
def test_espeak_speaks_a_sentence_in_several_voices():
    a, sr = synthesize_espeak("a red circle at the top left", "en-us+m1", 160, 50)
    b, _ = synthesize_espeak("a red circle at the top left", "en-us+f2", 160, 70)
    assert sr > 8000 and 0.5 < len(a) / sr < 5 and np.abs(a).max() > 0.01
    assert len(a) != len(b) or not np.allclose(a, b)
    data = make_speech_dataset(["the digit seven in green"], ("en-us+m3",), 2, engine="espeak")
    assert all(e.sample_rate == sr for e in data)


def test_espeak_missing_is_a_clear_error(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install -y espeak-ng"):
        synthesize_espeak("hello")
    with pytest.raises(ValueError, match="engine"):
        make_speech_dataset(["a"], ("v",), 1, engine="festival")
    assert error_rate(["a b"], ["a c"], "word") == 0.5
