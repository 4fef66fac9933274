"""Build tiny random-weight diffusers pipelines offline (tests, the demo, CPU benchmarks).

They have the real component classes (UNet2DConditionModel, AutoencoderKL, CLIP text encoder, CLIP
tokenizer, a scheduler) at toy width, are saved with `save_pretrained`, and load back through the real
`DiffusionPipeline.from_pretrained` path (as the diffusers generator loads them) — no downloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DONE_MARKER = ".imagefleet-tiny"
# toy CLIP text encoder shared by the tiny diffusion pipelines and the tiny CLIP scorer
TINY_TEXT = dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513)


def byte_chars() -> list[str]:
    """CLIP's byte-to-unicode table, in byte order (printable bytes as themselves, the rest shifted past 255)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def _write_tokenizer(folder: Path) -> None:
    """A byte-level CLIP vocab (256 bytes x {plain, end-of-word} + 2 specials) with no merges."""
    chars = byte_chars()
    vocab = {ch: i for i, ch in enumerate(chars)}
    vocab.update({ch + "</w>": i + 256 for i, ch in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def _tiny_tokenizer(path: Path) -> object:
    """The byte-level CLIP tokenizer, written next to `path` and loaded through `from_pretrained`."""
    from transformers import CLIPTokenizer

    tok_dir = path.with_name(path.name + ".tok")
    _write_tokenizer(tok_dir)
    return CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)


def build_tiny_pipeline(path: str | Path, kind: str = "sd", seed: int = 0) -> Path:
    """Create (once) a tiny pipeline folder and return it.

    Args:
        path: target folder; reused if a previous build completed.
        kind: "sd" (StableDiffusionPipeline shape) or "sdxl" (two text encoders, bigger UNet).
        seed: torch seed for the random weights.
    """
    path = Path(path)
    if (path / DONE_MARKER).exists():
        return path
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer(path)
    text_cfg: dict[str, Any] = dict(TINY_TEXT, layer_norm_eps=1e-5, projection_dim=32)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=8, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    if kind == "sd":
        from diffusers import StableDiffusionPipeline

        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                    in_channels=4, out_channels=4, cross_attention_dim=32, attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32)
        pipe: Any = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
                                       tokenizer=tokenizer, unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    elif kind == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=8,
                                    in_channels=4, out_channels=4, cross_attention_dim=64,
                                    attention_head_dim=(2, 4), use_linear_projection=True,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                    addition_embed_type="text_time", addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=80, transformer_layers_per_block=(1, 2),
                                    norm_num_groups=32)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
                                         text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg)),
                                         tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet,
                                         scheduler=scheduler)
    else:
        raise ValueError(f"kind must be 'sd' or 'sdxl', got {kind!r}")
    pipe.save_pretrained(str(path))
    (path / DONE_MARKER).write_text(kind)
    return path


def build_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    """Create (once) a tiny random CLIPModel + CLIPProcessor folder (byte-level tokenizer, 32 px images)."""
    path = Path(path)
    if (path / DONE_MARKER).exists():
        return path
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer(path)
    config = CLIPConfig(
        text_config=TINY_TEXT,
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(path))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(str(path))
    (path / DONE_MARKER).write_text("clip")
    return path


def build_tiny_lora(pipeline: str | Path, path: str | Path, seed: int = 0, rank: int = 4) -> Path:
    """Create (once) a LoRA for a tiny SD pipeline's UNet attention layers, saved as diffusers saves LoRAs
    (`pytorch_lora_weights.safetensors`), with random non-zero weights so it visibly changes images.

    Args:
        pipeline: folder of a tiny "sd" pipeline (`build_tiny_pipeline`).
        path: target folder; reused if a previous build completed.
        seed: torch seed for the adapter weights.
        rank: LoRA rank.
    """
    path = Path(path)
    if (path / DONE_MARKER).exists():
        return path
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(Path(pipeline) / "unet"))
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # B starts at zero (a no-op adapter): give it weights that change the output
        for module in unet.modules():
            if isinstance(module, LoraLayer):
                for b in module.lora_B.values():
                    b.weight.normal_(0.0, 0.5)  # type: ignore[operator]  # an nn.Linear's weight
    StableDiffusionPipeline.save_lora_weights(str(path), unet_lora_layers=get_peft_model_state_dict(unet))
    (path / DONE_MARKER).write_text("lora")
    return path


VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def build_tiny_vlm(path: str | Path, seed: int = 0) -> Path:
    """Create (once) a tiny random LLaVA (CLIP vision tower + Llama language model) with its processor and a chat
    template, loadable by `AutoModelForImageTextToText` / `AutoProcessor` (the `vqa` scorer's path)."""
    path = Path(path)
    if (path / DONE_MARKER).exists():
        return path
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    torch.manual_seed(seed)
    tokenizer: Any = _tiny_tokenizer(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.model_max_length = 512
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    LlavaForConditionalGeneration(config).save_pretrained(str(path))
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE)
    processor.save_pretrained(str(path))
    (path / DONE_MARKER).write_text("vlm")
    return path
