"""Train the shapes world's models from scratch on CPU: a tiny CLIP, a VAE, and draft and heavy UNets.

    python -m bench.world.train --stage all      # clip, vae, draft, heavy in order (each also runs alone)
    python -m bench.world.train --grammar v2     # the v2 grammar's training pool only, into models_v2

Every stage is seeded and single-threaded (one core stays free); wall times go to <out>/train_log.json. With
`--grammar v2` every caption a stage renders or tokenizes (CLIP pairs and hard negatives, VAE renders, UNet pools)
is a training-pool string (bench/world/split.py): no evaluation string is ever seen.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.world import data, models_for
from bench.world.scene import SIZE, Spec, get_grammar, sample_spec
from bench.world.tokenizer import MAX_TOKENS, load_tokenizer, write_tokenizer

logger = logging.getLogger(__name__)

SEEDS = {"clip": 101, "vae": 202, "draft": 303, "heavy": 404}  # torch + data seed per stage
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS, bos_token_id=512, eos_token_id=513, pad_token_id=513)
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              image_size=SIZE, patch_size=8)


def _lr(step: int, steps: int, peak: float, warmup: int = 200) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


def sampler(grammar: str) -> tuple[Callable[[random.Random], Spec], set[str] | None]:
    """What a stage draws its specs from, and the strings a hard negative may be (None: any): v1's whole grammar
    (exactly the streams bench/world/models was trained on), or v2's training pool."""
    get_grammar(grammar)
    if grammar == "v1":
        return sample_spec, None
    from bench.world.split import sample_training_spec, training_strings

    return sample_training_spec, {p for texts in training_strings().values() for p in texts}


def _tokens(tokenizer: Any, prompts: list[str]) -> Any:
    return tokenizer(prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                     return_tensors="pt").input_ids


def train_clip(out: Path, steps: int, batch_size: int, grammar: str = "v1") -> dict[str, Any]:
    """Contrastive CLIP on rendered (image, prompt) pairs, with one perturbed prompt per image as a hard
    negative; saved with its processor as `jobs/tiny_models.build_tiny_clip` lays a CLIP folder out."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(SEEDS["clip"])
    rng, gen = random.Random(SEEDS["clip"]), torch.Generator().manual_seed(SEEDS["clip"])
    sample, allowed = sampler(grammar)
    tok_dir = out.with_name(out.name + ".tok")
    vocab = write_tokenizer(tok_dir, get_grammar(grammar).words)
    tokenizer = load_tokenizer(tok_dir)
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    model = CLIPModel(CLIPConfig(text_config=dict(TEXT, vocab_size=vocab), vision_config=VISION, projection_dim=64))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    t0, losses = time.time(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 1e-3)
        specs, images = data.batch(rng, batch_size, sample)
        negatives = [data.perturb(s, rng, allowed) for s in specs]
        texts = [data.to_prompt(s) for s in specs + negatives]
        pixels = (data.augment(data.to_unit(images), gen) + 1) / 2
        outputs = model(input_ids=_tokens(tokenizer, texts), pixel_values=(pixels - mean) / std)
        logits = outputs.logits_per_image  # B images x 2B texts (true prompts, then hard negatives)
        target = torch.arange(batch_size)
        loss = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits[:, :batch_size].t(), target)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            logger.info("clip step %d loss %.3f (%.0f s)", step, sum(losses[-100:]) / len(losses[-100:]),
                        time.time() - t0)
    model.save_pretrained(str(out))
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out))
    shutil.rmtree(tok_dir)
    return {"steps": steps, "batch_size": batch_size, "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
            "wall_s": round(time.time() - t0, 1)}


VAE = dict(block_out_channels=(8, 16, 32, 32), in_channels=3, out_channels=3, latent_channels=4,
           norm_num_groups=4, layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, sample_size=SIZE)  # 64 px <-> 8 x 8 x 4 latents


def train_vae(out: Path, steps: int, batch_size: int, grammar: str = "v1") -> dict[str, Any]:
    """AutoencoderKL on renders (L1 + L2 + a small KL); its scaling_factor is set to 1 / std of the latents."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEEDS["vae"])
    rng = random.Random(SEEDS["vae"])
    sample = sampler(grammar)[0]
    vae = AutoencoderKL(**VAE)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    t0, losses = time.time(), []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 1e-3, warmup=100)
        x = data.to_unit(data.batch(rng, batch_size, sample)[1])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = (recon - x).abs().mean() + (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            logger.info("vae step %d loss %.4f (%.0f s)", step, sum(losses[-100:]) / len(losses[-100:]),
                        time.time() - t0)
    with torch.no_grad():
        latents = vae.encode(data.to_unit(data.batch(rng, 256, sample)[1])).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    vae.save_pretrained(str(out))
    return {"steps": steps, "batch_size": batch_size, "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4),
            "scaling_factor": round(float(1 / latents.std()), 4), "wall_s": round(time.time() - t0, 1)}


UNETS = {  # the draft is small and samples in few steps; the heavy one is wider, deeper and takes more
    "draft": dict(block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=4),
    "heavy": dict(block_out_channels=(64, 128), layers_per_block=1, attention_head_dim=8),
}
SAMPLING = {"draft": {"num_inference_steps": 4, "guidance_scale": 3.0},
            "heavy": {"num_inference_steps": 20, "guidance_scale": 3.0}}
NOISE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
             prediction_type="v_prediction")  # v keeps x0 errors small at high noise (an undertrained
# epsilon model's x0 estimates blow up there, and few-step samplers start from them)
POOL = 16384  # renders per UNet stage, encoded once (each is seen several times, under fresh noise)
DROP_PROMPT = 0.1  # share of empty prompts in training: classifier-free guidance at sampling


def _text_encoder(clip_dir: Path) -> Any:
    """The trained CLIP's text tower as a diffusers pipeline's CLIPTextModel (frozen)."""
    from transformers import CLIPModel, CLIPTextModel

    clip = CLIPModel.from_pretrained(str(clip_dir))
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def _pool(vae: Any, rng: random.Random, n: int,
          sample: Callable[[random.Random], Spec] = sample_spec) -> tuple[Any, list[str]]:
    """`n` renders (specs from `sample`) as scaled VAE latents, with their prompts."""
    import torch

    latents, prompts = [], []
    with torch.no_grad():
        for _ in range(n // 256):
            specs, images = data.batch(rng, 256, sample)
            latents.append(vae.encode(data.to_unit(images)).latent_dist.mean * vae.config.scaling_factor)
            prompts += [data.to_prompt(s) for s in specs]
    return torch.cat(latents), prompts


def train_unet(kind: str, out: Path, steps: int, batch_size: int, resume: bool = False,
               grammar: str = "v1") -> dict[str, Any]:
    """DDPM (v-prediction) training of a UNet on VAE latents of renders, conditioned on the frozen CLIP text
    encoder; saved as a StableDiffusionPipeline with the VAE, text encoder, tokenizer and a DPM-Solver."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTokenizer

    torch.manual_seed(SEEDS[kind])
    rng = random.Random(SEEDS[kind])
    clip_dir, t0 = out.parent / "clip", time.time()
    vae_dir = out.parent / "vae.work"  # the VAE stage's output; else (resuming later) the pipeline's own
    vae_dir = vae_dir if vae_dir.exists() else out / "vae"
    vae = AutoencoderKL.from_pretrained(str(vae_dir), dtype=torch.float32).eval().requires_grad_(False)
    text_encoder = _text_encoder(clip_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir))
    latents, prompts = _pool(vae, rng, POOL, sampler(grammar)[0])
    pool_s = time.time() - t0
    width = TEXT["hidden_size"]
    unet = UNet2DConditionModel(sample_size=SIZE // 8, in_channels=4, out_channels=4, cross_attention_dim=width,
                                down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, **UNETS[kind],
                                # the prompt, attention-pooled, also joins the time embedding: every block
                                # sees it (cross-attention alone learned the prompt slowly at this size)
                                addition_embed_type="text", addition_embed_type_num_heads=4)
    if resume:  # continue from the saved pipeline's UNet (a longer run in parts)
        unet.load_state_dict(UNet2DConditionModel.from_pretrained(str(out / "unet")).float().state_dict())
    noise_sched = DDPMScheduler(**NOISE)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(SEEDS[kind])
    losses: list[float] = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, 1e-3)
        idx = torch.randint(0, len(prompts), (batch_size,), generator=gen)
        texts = [prompts[i] if rng.random() >= DROP_PROMPT else "" for i in idx.tolist()]
        with torch.no_grad():
            cond = text_encoder(_tokens(tokenizer, texts))[0]
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, NOISE["num_train_timesteps"], (batch_size,), generator=gen)
        pred = unet(noise_sched.add_noise(x0, noise, t), t, cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise_sched.get_velocity(x0, noise, t))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            logger.info("%s step %d loss %.4f (%.0f s)", kind, step, sum(losses[-100:]) / len(losses[-100:]),
                        time.time() - t0)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DPMSolverMultistepScheduler(**NOISE), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.to(dtype=torch.float16).save_pretrained(str(out))  # half the bytes; loads at any dtype
    (out / "sampling.json").write_text(json.dumps(SAMPLING[kind]) + "\n")
    return {"steps": steps, "batch_size": batch_size, "pool": POOL, "pool_s": round(pool_s, 1),
            "params": sum(p.numel() for p in unet.parameters()),
            "final_loss": round(sum(losses[-100:]) / len(losses[-100:]), 4), "wall_s": round(time.time() - t0, 1),
            **SAMPLING[kind]}


STAGES: dict[str, Any] = {"clip": train_clip, "vae": train_vae,
          "draft": lambda out, steps, bs, resume, grammar: train_unet("draft", out, steps, bs, resume, grammar),
          "heavy": lambda out, steps, bs, resume, grammar: train_unet("heavy", out, steps, bs, resume, grammar)}
STAGE_DIRS = {"vae": "vae.work"}  # the VAE is kept only inside the pipelines it becomes part of
DEFAULT_STEPS = {"clip": (1500, 64), "vae": (1500, 16), "draft": (2000, 32), "heavy": (4000, 32)}
DEFAULT_STEPS_V2 = {**DEFAULT_STEPS, "vae": (3000, 16)}  # v2's VAE at 1500 steps kept ground truth at 0.74


def main(argv: list[str] | None = None) -> None:
    """CLI: train one stage or all, into --out (default bench/world/models; models_v2 with --grammar v2)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--grammar", choices=["v1", "v2"], default="v1",
                        help="v2: the richer grammar's training pool only (bench/world/split.py)")
    parser.add_argument("--out", type=Path, help="default models (v1) or models_v2 (v2)")
    parser.add_argument("--steps", type=int, help="override the stage's step count (smoke runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="draft/heavy: continue from the saved UNet")
    args = parser.parse_args(argv)
    args.out = args.out or models_for(args.grammar)
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "train_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    for stage in STAGES if args.stage == "all" else [args.stage]:
        steps, batch_size = (DEFAULT_STEPS_V2 if args.grammar == "v2" else DEFAULT_STEPS)[stage]
        folder = args.out / STAGE_DIRS.get(stage, stage)
        if stage in ("draft", "heavy"):
            result = STAGES[stage](folder, args.steps or steps, batch_size, args.resume, args.grammar)
            if args.resume:  # a continued run: keep the earlier parts in the log
                result["continues"] = log.get(stage)
        else:
            result = STAGES[stage](folder, args.steps or steps, batch_size, args.grammar)
        result["threads"] = args.threads
        result["grammar"] = args.grammar
        log = json.loads(log_path.read_text()) if log_path.exists() else {}  # again: stages may run side by side
        log[stage] = result
        log_path.write_text(json.dumps(log, indent=2) + "\n")
        logger.info("%s done: %s", stage, result)


if __name__ == "__main__":
    main()
