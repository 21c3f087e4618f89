"""``export_job(cfg)`` for tools/export.py."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from segdense.errors import ConfigError
from segdense.export import DTYPES, FORMATS, export_model
from segdense.export.parity import check_parity_on_images, folder_images, validation_images
from segdense.inference import load_bundle
from segdense.inference.writers import check_writable_dir


def export_job(cfg: DictConfig) -> list[dict]:
    """Export ``cfg.checkpoint`` as ``cfg.format`` to ``cfg.output`` and print the parity checks: random inputs of
    ``cfg.sizes``, then ``cfg.verify_images`` real images (the checkpoint's validation set or ``cfg.verify_input``).
    The checkpoint is read first: a file that is not one is named before any other option is asked for."""
    bundle = load_bundle(cfg.checkpoint)
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: expected one of {', '.join(FORMATS)}")
    output = Path(cfg.output)
    if output.exists() and not cfg.overwrite:
        raise ConfigError(f"output={output} exists; pass overwrite=true to replace it")
    sizes = [list(s) for s in OmegaConf.to_container(cfg.sizes)]
    if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise ConfigError(f"sizes={sizes}: expected a list of [height, width] pairs")
    if cfg.dtype not in DTYPES or (cfg.dtype != "fp32" and cfg.format != "onnx"):
        raise ConfigError(f"dtype={cfg.dtype}: expected fp32, or fp16 with format=onnx")
    on_images = cfg.verify and cfg.format in ("onnx", "torchscript") and cfg.verify_images > 0
    if cfg.verify and cfg.dtype == "fp16" and not on_images:
        raise ConfigError("dtype=fp16 is judged on real images: keep verify_images > 0 (or pass verify=false)")
    if not 0 < cfg.min_agreement <= 100:
        raise ConfigError(f"min_agreement={cfg.min_agreement}: expected a percentage in (0, 100]")
    check_writable_dir(output.parent)
    images = []
    if on_images:  # gather them first: a missing dataset fails before anything is written
        images = (folder_images(bundle, cfg.verify_input, cfg.verify_images) if cfg.verify_input
                  else validation_images(bundle, cfg.verify_images))
    results = export_model(bundle, cfg.format, output, sizes=sizes, opset=cfg.opset, verify=cfg.verify,
                           tolerance=cfg.tolerance, dtype=cfg.dtype)
    for r in results:
        print(f"  input {r['batch']}x{r['size'][0]}x{r['size'][1]}: max |exported - PyTorch| = {r['max_abs_diff']:.3g}")
    if on_images:
        p = check_parity_on_images(bundle.model, cfg.format, output, images, cfg.min_agreement)
        print(f"  {p['images']} real image(s), {p['pixels']:,} pixels: argmax agreement {p['agreement']:.3f} % "
              f"(min {cfg.min_agreement:g} %), max |exported - PyTorch| logit = {p['max_abs_diff']:.3g}")
        results = [*results, {"real_images": p}]
    print(f"wrote {output} ({cfg.format}{', fp16' if cfg.dtype == 'fp16' else ''})")
    return results
