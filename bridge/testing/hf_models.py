"""Hugging Face models in their real formats for the tests and benchmarks (random weights):
MusicGen, Stable Audio Open, AST, NLI, sentence BERT and CLAP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bridge.testing.separation_models import parameter_count


def random_musicgen(text: Any, audio: Any, decoder: dict[str, Any], melody: bool = False, seed: int = 0) -> Any:
    """A random MusicGen (or MusicGen Melody) from a T5 config, an EnCodec config and the decoder's
    settings, ready to generate: pad = bos = decoder start = 2048 (one past the codebook), sampling
    with guidance 3, as the published checkpoints' generation configs have it.

    The benches build the published sizes with it, `build_tiny_musicgen` the tests' toy one.
    """
    import torch
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # token ids 2048 sit just past the vocabulary, by design
    try:
        torch.manual_seed(seed)
        special = {"pad_token_id": 2048, "bos_token_id": 2048, "decoder_start_token_id": 2048}
        if melody:
            from transformers import (
                MusicgenMelodyConfig,
                MusicgenMelodyDecoderConfig,
                MusicgenMelodyForConditionalGeneration,
            )

            model: Any = MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(
                text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                decoder=MusicgenMelodyDecoderConfig(**decoder, **special).to_dict()))
        else:
            from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration

            model = MusicgenForConditionalGeneration(MusicgenConfig(
                text_encoder=text.to_dict(), audio_encoder=audio.to_dict(),
                decoder=MusicgenDecoderConfig(**decoder, **special).to_dict()))
        # A fresh EnCodec's codebooks are zeros (real ones are learned), so every token would decode
        # to the same sound; random codebooks make the audio depend on what was sampled.
        for layer in model.audio_encoder.quantizer.layers:
            torch.nn.init.normal_(layer.codebook.embed)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.cluster_size.fill_(1.0)
        generation = model.generation_config
        generation.pad_token_id = generation.bos_token_id = generation.decoder_start_token_id = 2048
        generation.do_sample, generation.guidance_scale = True, 3.0
        return model
    finally:
        hf_logging.set_verbosity(verbosity)


def save_random_musicgen(folder: Path, text: Any, audio: Any, decoder: dict[str, Any], processor_from: Path) -> int:
    """`random_musicgen` saved to `folder` with the processor (tokenizer, feature extractor) of the
    checkpoint at `processor_from` (e.g. `build_tiny_musicgen`'s): the benches' way to time a
    published size without its weights. Returns the parameter count."""
    from transformers import AutoProcessor

    model = random_musicgen(text, audio, decoder)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(processor_from).save_pretrained(folder)
    return parameter_count(model)


def build_tiny_musicgen(folder: Path, melody: bool = False, seed: int = 0) -> Path:
    """A random MusicGen (about 0.7 M parameters) saved as a real checkpoint folder.

    The recipe of DESIGN.md: T5 with d_model 32 and one layer; EnCodec at 32 kHz with
    upsampling_ratios [8, 5, 4, 4] (50 frames a second), codebook_size 2048, target_bandwidths
    [2.2] (4 codebooks); a one-layer decoder with vocab 2048 and pad = bos = decoder start = 2048.
    A T5 tokenizer over a small character vocabulary stands in for t5-base's. `melody=True`
    saves a MusicGen Melody with the melody feature extractor's settings.
    """
    import json

    from transformers import EncodecConfig, T5Config, T5Tokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # token ids 2048 sit just past the vocabulary, by design
    try:
        text = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
        audio = EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], codebook_size=2048,
                              target_bandwidths=[2.2], num_filters=4, hidden_size=32, codebook_dim=32,
                              num_lstm_layers=1, audio_channels=1)
        decoder = {"vocab_size": 2048, "num_codebooks": 4, "hidden_size": 32, "num_hidden_layers": 1,
                   "num_attention_heads": 2, "ffn_dim": 64}
        model = random_musicgen(text, audio, decoder, melody=melody, seed=seed)
        if melody:
            import torch

            with torch.no_grad():  # a random projection barely moves the logits: make the melody count
                model.audio_enc_to_dec_proj.weight.mul_(30.0)
        model.save_pretrained(folder)
        vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
        vocab += [(chr(c), -2.0) for c in range(ord("a"), ord("z") + 1)]
        tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
        if melody:
            # transformers' melody extractor needs torchaudio to be built, so its settings are
            # written as the checkpoint on the hub has them.
            tokenizer.save_pretrained(folder)
            (Path(folder) / "preprocessor_config.json").write_text(json.dumps({
                "feature_extractor_type": "MusicgenMelodyFeatureExtractor", "feature_size": 12,
                "sampling_rate": 32000, "hop_length": 4096, "chunk_length": 30, "n_fft": 16384,
                "num_chroma": 12, "padding_value": 0.0, "return_attention_mask": False, "stem_indices": [3, 2],
                "processor_class": "MusicgenMelodyProcessor",
            }))
        else:
            from transformers import EncodecFeatureExtractor, MusicgenProcessor

            extractor = EncodecFeatureExtractor(sampling_rate=32000, feature_size=1)
            MusicgenProcessor(extractor, tokenizer).save_pretrained(folder)
    finally:
        hf_logging.set_verbosity(verbosity)
    return Path(folder)


def build_tiny_stable_audio(folder: Path, seed: int = 0, sample_size: int = 1024) -> Path:
    """A random Stable Audio Open pipeline (about 20 k parameters) saved with `save_pretrained`.

    The components of stable-audio-open-1.0 at toy sizes: a one-layer DiT over 3 latent channels,
    an Oobleck VAE at 8 kHz stereo with a hop of 32 samples (so `sample_size` latents make
    sample_size * 32 / 8000 s: 4.1 s by default), EDM DPM-Solver in v-prediction, a one-layer T5
    (d_model 16) and a T5 tokenizer over a small character vocabulary (no hub download).
    """
    import torch
    from diffusers import AutoencoderOobleck, EDMDPMSolverMultistepScheduler, StableAudioDiTModel, StableAudioPipeline
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(seed)
    conditioning = 8
    transformer = StableAudioDiTModel(
        sample_size=sample_size, in_channels=3, out_channels=3, num_layers=1, attention_head_dim=4,
        num_attention_heads=2, num_key_value_attention_heads=1, cross_attention_dim=8, time_proj_dim=8,
        global_states_input_dim=2 * conditioning, cross_attention_input_dim=conditioning,
    )
    scheduler = EDMDPMSolverMultistepScheduler(solver_order=2, prediction_type="v_prediction", sigma_data=1.0,
                                               sigma_schedule="exponential")
    vae = AutoencoderOobleck(encoder_hidden_size=6, downsampling_ratios=[2, 4, 4], decoder_channels=3,
                             decoder_input_channels=3, audio_channels=2, channel_multiples=[1, 2, 2],
                             sampling_rate=8000)
    text = T5EncoderModel(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(chr(c), -2.0) for c in range(ord("a"), ord("z") + 1)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=128)
    projection = StableAudioProjectionModel(text_encoder_dim=16, conditioning_dim=conditioning, min_value=0,
                                            max_value=64)
    StableAudioPipeline(vae=vae, text_encoder=text, projection_model=projection, tokenizer=tokenizer,
                        transformer=transformer, scheduler=scheduler).save_pretrained(folder)
    return Path(folder)


# AudioSet display names, as the AST checkpoint's id2label spells them.
TINY_AST_LABELS = ("Music", "Speech", "Drum", "Bass guitar", "Singing", "Guitar")


def build_tiny_ast(folder: Path, seed: int = 0, labels: tuple[str, ...] = TINY_AST_LABELS) -> Path:
    """A random Audio Spectrogram Transformer classifier (about 7 k parameters) saved with `save_pretrained`.

    The AudioSet checkpoint's shape at toy sizes: one layer, hidden size 16, 16 mel bins over 128
    frames (1.28 s at 16 kHz), patches of 16 with stride 10, `id2label` with a few AudioSet names;
    its `ASTFeatureExtractor` at 16 kHz beside it (no hub download).
    """
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_mel_bins=16,
        max_length=128, frequency_stride=10, time_stride=10, patch_size=16,
        id2label=dict(enumerate(labels)), label2id={label: index for index, label in enumerate(labels)},
    )
    ASTForAudioClassification(config).eval().save_pretrained(folder)
    ASTFeatureExtractor(feature_size=1, sampling_rate=16000, num_mel_bins=16, max_length=128).save_pretrained(folder)
    return Path(folder)


TINY_WORDS = ("drums", "bass", "vocals", "melody", "effects", "kick", "snare", "punchy", "dark", "pad", "a", "the",
              "this", "example", "is", "sound", "of", "with", "and", "808", "sub", "lead", "vocal", "female")


def _tiny_bert_tokenizer(folder: Path) -> Any:
    """A WordPiece tokenizer over a few music words (a stand-in for a real vocabulary)."""
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",")
    return BertTokenizerFast(vocab={word: n for n, word in enumerate((*specials, *TINY_WORDS))}, do_lower_case=True)


def build_tiny_nli(folder: Path, seed: int = 0, labels: tuple[str, ...] = ("contradiction", "neutral", "entailment"),
                   ) -> Path:
    """A random BERT sequence classifier (about 10 k parameters) with an MNLI head's labels, saved by
    save_pretrained with its tokenizer: transformers' zero-shot pipeline loads it like bart-large-mnli.
    `labels` without an entailment label builds a model the zero-shot engine must refuse."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = _tiny_bert_tokenizer(folder)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(labels), initializer_range=0.5,
                        id2label=dict(enumerate(labels)), label2id={label: n for n, label in enumerate(labels)})
    BertForSequenceClassification(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_sentence_bert(folder: Path, seed: int = 0, hidden_size: int = 16) -> Path:
    """A random BERT in sentence-transformers' format with BGE's recipe (CLS pooling, then normalised):
    the shape of BAAI/bge-small-en-v1.5 at a few thousand parameters, loaded by `samples.model`.
    `hidden_size` is the vector width (384 gives bge-small's, for comparing with Workers AI's)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    hf = folder / "hf"
    tokenizer = _tiny_bert_tokenizer(hf)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden_size, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64, initializer_range=0.5)
    BertModel(config).eval().save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = Transformer(str(hf), max_seq_length=32)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="cls")
    out = folder / "model"
    SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(out))
    return out


def _byte_level_tokenizer() -> Any:
    """A RoBERTa byte-level BPE tokenizer without merges: every byte is a token, so any text encodes
    (CLAP's processor expects a RoBERTa tokenizer; the real one's vocabulary is not on this machine)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import RobertaTokenizer

    specials = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
    return RobertaTokenizer(vocab={token: n for n, token in enumerate((*specials, *sorted(ByteLevel.alphabet())))},
                            merges=[])


def build_tiny_clap(folder: Path, seed: int = 0) -> Path:
    """A random CLAP (about 13 k parameters) and its `ClapProcessor` saved with `save_pretrained`.

    laion/clap-htsat-unfused's shape at toy sizes: a one-layer RoBERTa text tower, a two-stage HTSAT
    (Swin) audio tower over 16 mel bins, an 8-dimensional joint space; the feature extractor hears
    1 s at 16 kHz with the published checkpoint's `rand_trunc` truncation and `repeatpad` padding.
    `samples.clap_model` pointed at the folder loads it through the real loader.
    """
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    torch.manual_seed(seed)
    tokenizer = _byte_level_tokenizer()
    config = ClapConfig(
        text_config={"vocab_size": tokenizer.vocab_size, "hidden_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 130,
                     "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
        audio_config={"spec_size": 64, "num_mel_bins": 16, "patch_embeds_hidden_size": 8, "depths": [1, 1],
                      "num_attention_heads": [1, 1], "window_size": 4, "patch_stride": (4, 4), "patch_size": 4,
                      "enable_fusion": False, "hidden_size": 16, "projection_hidden_size": 16},
        projection_dim=8,
    )
    ClapModel(config).eval().save_pretrained(folder)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160, max_length_s=1,
                                     fft_window_size=512, frequency_min=50, frequency_max=8000,
                                     truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    return Path(folder)


def build_released_clap(folder: Path, seed: int = 0) -> tuple[Path, int]:
    """laion/clap-htsat-unfused's architecture with random weights, saved with `save_pretrained`; returns
    (folder, parameter count). transformers' `ClapConfig()` and `ClapFeatureExtractor()` defaults are that
    checkpoint's settings (RoBERTa-base text tower, HTSAT-tiny audio tower without fusion, 512-dimensional
    joint space, 48 kHz, 64 mel bins, 10 s windows); the processor gets the published `rand_trunc`
    truncation. Only the tokenizer differs: byte-level without merges (one token per character), so a
    query's text costs a little more than with the real vocabulary."""
    import torch
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor

    torch.manual_seed(seed)
    model = ClapModel(ClapConfig()).eval()
    model.save_pretrained(folder)
    extractor = ClapFeatureExtractor(truncation="rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=extractor, tokenizer=_byte_level_tokenizer()).save_pretrained(folder)
    return Path(folder), parameter_count(model)
