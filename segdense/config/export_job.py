"""``export_job(cfg)`` for tools/export.py."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .validate import ConfigError


def export_job(cfg: DictConfig) -> list[dict]:
    """Export ``cfg.checkpoint`` as ``cfg.format`` to ``cfg.output`` and print the parity check."""
    from segdense.export import FORMATS, export_model
    from segdense.inference import load_bundle
    from segdense.inference.writers import check_writable_dir

    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format}: expected one of {', '.join(FORMATS)}")
    output = Path(cfg.output)
    if output.exists() and not cfg.overwrite:
        raise ConfigError(f"output={output} exists; pass overwrite=true to replace it")
    sizes = [list(s) for s in OmegaConf.to_container(cfg.sizes)]
    if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise ConfigError(f"sizes={sizes}: expected a list of [height, width] pairs")
    bundle = load_bundle(cfg.checkpoint)
    check_writable_dir(output.parent)
    results = export_model(bundle, cfg.format, output, sizes=sizes, opset=cfg.opset, verify=cfg.verify,
                           tolerance=cfg.tolerance)
    print(f"wrote {output} ({cfg.format})")
    for r in results:
        print(f"  input {r['batch']}x{r['size'][0]}x{r['size'][1]}: max |exported - PyTorch| = {r['max_abs_diff']:.3g}")
    return results
