"""GPU benchmark: random-weight pipelines with the REAL architectures of SD-Turbo (SD 2.1 UNet, OpenCLIP-H text
encoder, SD VAE) and SDXL(-Turbo) — same FLOPs as the real models, no weights to download.

For each workload it measures img/s of a bare diffusers loop and of imagefleet's DiffusersGenerator actor
(same folder loaded through `from_pretrained`), under option sets: bf16+SDPA, +channels_last, +torch.compile,
+tiny VAE (AutoencoderTiny with TAESD's architecture), +FP8-stored denoiser weights; with each, the device's peak
memory. Prints JSON; `bench/run_all.py --gpu` folds it into
BENCHMARKS.md. One command on a CUDA machine:

    python bench/gpu.py --out bench/results/gpu.json

`--smoke` runs the same code paths on CPU with toy sizes (checks the harness, not the speed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# FLOPs per image and physical-limit img/s on one H100 (bf16 dense ~790 TFLOP/s), from shared/PERFORMANCE.md.
WORKLOADS: dict[str, dict[str, Any]] = {
    "sd-turbo-1step-512": {"arch": "sd21", "size": 512, "steps": 1, "cfg": 0.0, "batch": 16, "tflops": 3.36,
                           "limit": 235, "limit_tiny_vae": 797},
    "sdxl-turbo-4step-512": {"arch": "sdxl", "size": 512, "steps": 4, "cfg": 0.0, "batch": 8, "tflops": 8.98,
                             "limit": 88, "limit_tiny_vae": None},
    "sdxl-30step-1024": {"arch": "sdxl", "size": 1024, "steps": 30, "cfg": 5.0, "batch": 4, "tflops": 416,
                         "limit": 1.90, "limit_tiny_vae": None},
}
OPTION_SETS = {
    "bf16+sdpa": {},
    "+channels_last": {"channels_last": True},
    "+compile": {"channels_last": True, "compile": True},
    "+tiny_vae": {"channels_last": True, "compile": True, "tiny_vae": True},
    "+fp8_weights": {"channels_last": True, "compile": True, "fp8_weights": True},
}


def build(arch: str, folder: Path, smoke: bool) -> Path:
    """Save a random-weight pipeline with the real architecture (or a toy one with --smoke)."""
    import torch
    from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from imagefleet.jobs.tiny_models import _write_tokenizer

    if (folder / "model_index.json").exists():
        return folder
    dtype = torch.float32 if smoke else torch.bfloat16
    _write_tokenizer(folder.with_name(folder.name + ".tok"))
    tok = CLIPTokenizer.from_pretrained(str(folder.with_name(folder.name + ".tok")), model_max_length=77)
    w = 1 if not smoke else 0  # smoke: shrink everything

    def text(hidden: int, layers: int, heads: int, proj: bool = False) -> Any:
        cfg = CLIPTextConfig(hidden_size=hidden if w else 32, intermediate_size=hidden * 4 if w else 64,
                             num_hidden_layers=layers if w else 1, num_attention_heads=heads if w else 2,
                             projection_dim=hidden if w else 32, vocab_size=49408, max_position_embeddings=77,
                             hidden_act="gelu", bos_token_id=512, eos_token_id=513, pad_token_id=513)
        return (CLIPTextModelWithProjection if proj else CLIPTextModel)(cfg).to(dtype)

    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512) if w else (8, 8, 8, 8), layers_per_block=2 if w else 1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, norm_num_groups=32 if w else 8).to(dtype)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   timestep_spacing="trailing", steps_offset=1)
    if arch == "sd21":
        from diffusers import StableDiffusionPipeline

        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280, 1280) if w else (32, 32, 64, 64), layers_per_block=2 if w else 1,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024 if w else 32,
            attention_head_dim=(5, 10, 20, 20) if w else 8, use_linear_projection=True, sample_size=64,
            norm_num_groups=32).to(dtype)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text(1024, 23, 16), tokenizer=tok, unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        from diffusers import StableDiffusionXLPipeline

        unet = UNet2DConditionModel(
            block_out_channels=(320, 640, 1280) if w else (32, 64, 64), layers_per_block=2 if w else 1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10) if w else (1, 1, 1), attention_head_dim=(5, 10, 20) if w else 8,
            cross_attention_dim=2048 if w else 64, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256 if w else 8, projection_class_embeddings_input_dim=2816 if w else 80,
            sample_size=128, norm_num_groups=32).to(dtype)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text(768, 12, 12), tokenizer=tok,
                                         text_encoder_2=text(1280, 32, 20, proj=True), tokenizer_2=tok, unet=unet,
                                         scheduler=sched)
    pipe.save_pretrained(str(folder))
    taesd = AutoencoderTiny() if w else AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                                                        decoder_block_out_channels=(8, 8, 8, 8))
    taesd.to(dtype).save_pretrained(str(folder.with_name(folder.name + ".taesd")))
    return folder


def measure(model: Path, wl: dict[str, Any], opts: dict[str, Any], smoke: bool, iters: int) -> dict[str, float]:
    import numpy as np
    import torch

    from imagefleet.actors.diffusers_generator import DiffusersGenerator
    from imagefleet.configs.generator import DiffusersConfig, GenerationDefaults, PoolConfig

    size = wl["size"] if not smoke else 64
    batch = wl["batch"] if not smoke else 2
    cfg = DiffusersConfig(
        model=str(model), dtype="float32" if smoke else "bfloat16",
        channels_last=opts.get("channels_last", False), compile=opts.get("compile", False) and not smoke,
        tiny_vae=str(model.with_name(model.name + ".taesd")) if opts.get("tiny_vae") else "",
        fp8_weights=opts.get("fp8_weights", False),
        pool=PoolConfig(batch_size=batch, num_gpus=1),
        defaults=GenerationDefaults(width=size, height=size, num_steps=wl["steps"], guidance_scale=wl["cfg"]),
    )
    gen = DiffusersGenerator(cfg)
    n = batch
    rows = {
        "prompt": np.array([f"benchmark prompt {i}" for i in range(n)], dtype=object),
        "negative_prompt": np.array([""] * n, dtype=object), "seed": np.arange(n),
        "width": np.full(n, size), "height": np.full(n, size), "num_steps": np.full(n, wl["steps"]),
        "guidance_scale": np.full(n, wl["cfg"]), "status": np.array(["pending"] * n, dtype=object),
        "error": np.array([""] * n, dtype=object), "enqueued_at": np.full(n, time.time()),
    }

    def sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    # bare diffusers call (same pipeline object, so the same options apply)
    def bare() -> None:
        with torch.inference_mode():
            gen.pipe(prompt=list(rows["prompt"]), width=size, height=size, num_inference_steps=wl["steps"],
                     guidance_scale=wl["cfg"], output_type="np")

    def ours() -> None:
        out = gen(dict(rows))
        assert (out["status"] == "generated").all(), out["error"]

    results: dict[str, float] = {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for name, fn in (("bare", bare), ("actor", ours)):
        fn()  # warm-up (and compile)
        sync()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        results[f"{name}_img_s"] = round(iters * n / (time.perf_counter() - t), 3)
    if torch.cuda.is_available():
        results["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
    return results


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", default="all", choices=["all", *WORKLOADS])
    p.add_argument("--options", default="all", choices=["all", *OPTION_SETS])
    p.add_argument("--dir", default=os.environ.get("IMAGEFLEET_BENCH_DIR", "/tmp/imagefleet-bench") + "/gpu-models")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="toy sizes on CPU: checks the harness only")
    p.add_argument("--out", default="")
    args = p.parse_args()
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --smoke to check the harness on CPU", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke)"
    report: dict[str, Any] = {"device": device, "torch": torch.__version__, "at": time.strftime("%Y-%m-%d %H:%M"),
                              "results": []}
    for wname, wl in WORKLOADS.items():
        if args.workload not in ("all", wname):
            continue
        model = build(wl["arch"], Path(args.dir) / (wl["arch"] + ("-smoke" if args.smoke else "")), args.smoke)
        for oname, opts in OPTION_SETS.items():
            if args.options not in ("all", oname):
                continue
            r = measure(model, wl, opts, args.smoke, args.iters)
            limit = wl["limit_tiny_vae"] if opts.get("tiny_vae") and wl["limit_tiny_vae"] else wl["limit"]
            if opts.get("tiny_vae") and not wl["limit_tiny_vae"]:
                limit = None
            r.update(workload=wname, options=oname, limit_img_s=limit,
                     pct_of_limit=round(100 * r["actor_img_s"] / limit, 1) if limit and not args.smoke else None,
                     actor_vs_bare=round(r["actor_img_s"] / r["bare_img_s"], 3))
            report["results"].append(r)
            print(json.dumps(r), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
