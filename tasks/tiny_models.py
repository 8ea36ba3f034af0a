"""The parts tiny offline pipelines are built from, and the tiny captioner and safety checker.

Each engine builds its tiny pipeline (tasks/engines/) from these parts: the same pipeline classes
as the full profile, from small configs with seeded random weights, so the whole chain runs on a
CPU in seconds without downloading anything. Their output is noise-like by nature: they exercise
the code path, not the art.

The tokenizers are byte-pair encoders trained here on a small built-in corpus of prompt
vocabulary, in the same formats as the real ones (CLIP for image and video, RoBERTa for
audio), so token counting and the 77-token limit behave like the real models' do.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

TOKEN_LIMIT = 77  # CLIP's and CLAP's context length, kept by the tiny tokenizers too.

# Words a brief, the prompt templates and everyday English prompts use, so they are mostly single
# tokens, as in the real vocabularies. Anything else falls back to characters.
_CORPUS = """
a an the of and with on in at to for from by into over under through its their this that
mystical forest ancient trees glowing creatures fantasy book cover art dramatic lighting
car sound realistic engine accelerating seconds driving winding mountain road cinematic smooth
camera movement painting illustration detailed highly intricate epic golden hour volumetric
rim light soft shadows sharp focus masterpiece best quality high resolution concept matte
portrait landscape composition vertical centered subject space for title clean recording
studio mono stereo clear punchy low rumble exhaust revving motor idle loud quiet ambience wind
tyres tires gravel asphalt shot tracking aerial drone wide angle lens film grain anamorphic
dusk dawn night day sunset sunrise fog mist rain snow clouds sky valley cliffs river lake sea
blurry low worst quality jpeg artifacts watermark signature text letters logo deformed ugly
distorted noise hiss clipping music speech voice flicker jitter frame static still cartoon
dragon castle knight wizard magic sword moon stars glow light dark red blue green purple
""".split()


def _train_byte_level_bpe(vocab_size: int, specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """RoBERTa / GPT-2 style BPE (spaces become 'Ġ') trained on the built-in corpus by the tokenizers library."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so every word is frequent enough to be merged whole.
    tok.train_from_iterator([" ".join(_CORPUS)] * 4, trainer=trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    return bpe["vocab"], merges


def _clip_bpe(vocab_size: int, specials: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP style BPE (lower-case words, '</w>' closes each word) learned from the built-in corpus.

    Learned here, not by the tokenizers library: its trainer breaks ties between equally frequent
    pairs differently on every run, which gave every tiny build different token ids and so
    different covers and clips for the same seed. Here the most frequent pair wins, ties by the
    pair itself: the same vocabulary on every machine.
    """
    alphabet = [chr(c) for c in range(33, 127)]
    vocab = {token: i for i, token in enumerate([*specials, *alphabet, *(ch + "</w>" for ch in alphabet)])}
    words = {word: [*word[:-1], word[-1] + "</w>"] for word in sorted(set(_CORPUS))}
    merges: list[tuple[str, str]] = []
    while len(vocab) < vocab_size:
        pairs = Counter(pair for symbols in words.values() for pair in pairwise(symbols))
        if not pairs:
            break  # every word is one token
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        vocab.setdefault("".join(best), len(vocab))
        for word, symbols in words.items():
            merged, i = [], 0
            while i < len(symbols):
                if tuple(symbols[i : i + 2]) == best:
                    merged.append("".join(best))
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[word] = merged
    return vocab, merges


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe(1000, specials=["<|startoftext|>", "<|endoftext|>"])
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=TOKEN_LIMIT)


def roberta_tokenizer():
    from transformers import RobertaTokenizer

    vocab, merges = _train_byte_level_bpe(1000, specials=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=TOKEN_LIMIT)


def scheduler():
    """DPM-Solver++ on Stable Diffusion's published noise schedule (scaled linear betas)."""
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )


def clip_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=TOKEN_LIMIT,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=32,
    )
    return CLIPTextModel(config)


def image_vae(in_channels: int = 3, channels: int = 8):
    from diffusers import AutoencoderKL

    # Four blocks: the same 8x spatial compression as the real VAEs, so sizes validate alike.
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(channels,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=64,
    )


def bert_tokenizer():
    """A WordPiece vocabulary of the corpus words plus single characters, in BERT's format."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = sorted(set(_CORPUS)) + [chr(c) for c in range(33, 127)] + [f"##{chr(c)}" for c in range(97, 123)]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + pieces))}
    return BertTokenizer(vocab=vocab, model_max_length=TOKEN_LIMIT)


def t5_tokenizer(model_max_length: int):
    """A SentencePiece-style unigram vocabulary in T5's format: the corpus words as whole pieces
    ('▁' marks a word start), then single characters to spell anything else.

    Written from the fixed word list with fixed scores (a whole word outscores its letters), so
    every build has the same ids; `model_max_length` is the engine's own context (T5s vary).
    """
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # T5's ids 0, 1, 2
    words = [(f"▁{word}", -1.0) for word in sorted(set(_CORPUS))]
    characters = [("▁", -2.0)] + [(chr(c), -5.0) for c in range(33, 127)]
    return T5Tokenizer(vocab=specials + words + characters, extra_ids=0, model_max_length=model_max_length)


class TinyCaptioner:
    """A tiny BLIP captioner (model + processor) that saves and loads like a pipeline folder."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    def save_pretrained(self, path) -> None:
        self.model.save_pretrained(path)
        self.processor.save_pretrained(path)


def build_caption_model():
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    tokenizer = bert_tokenizer()
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 64, "bos_token_id": tokenizer.cls_token_id,
            "pad_token_id": tokenizer.pad_token_id, "sep_token_id": tokenizer.sep_token_id,
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 64, "patch_size": 16,
        },
        projection_dim=32,
    )  # fmt: skip
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": 64, "width": 64}), tokenizer=tokenizer
    )
    return TinyCaptioner(BlipForConditionalGeneration(config), processor)


class TinySafetyChecker:
    """Stable Diffusion's safety checker, tiny, saved in the layout of an SD model folder."""

    def __init__(self, checker, processor):
        self.checker, self.processor = checker, processor

    def save_pretrained(self, path) -> None:
        self.checker.save_pretrained(f"{path}/safety_checker")
        self.processor.save_pretrained(f"{path}/feature_extractor")


def build_safety_checker():
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessorPil

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=32,
    )  # fmt: skip
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return TinySafetyChecker(StableDiffusionSafetyChecker(config), processor)


AUX_BUILDERS = {"caption": build_caption_model, "safety": build_safety_checker}


def eval_modules(built) -> None:
    """Constructors leave modules in training mode; dropout breaks determinism."""
    if isinstance(built, TinyCaptioner):
        modules = [built.model]
    elif isinstance(built, TinySafetyChecker):
        modules = [built.checker]
    else:
        modules = list(built.components.values())
    import torch  # here, not at the top: importing the flows (a CLI command, a worker) must not cost torch's 2 s

    for component in modules:
        if isinstance(component, torch.nn.Module):
            component.eval()
