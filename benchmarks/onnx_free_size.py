"""Which networks export to ONNX with free spatial axes (`segflow package`'s ONNX file takes any size
the network takes), network by network, as the package builder decides it: export with free axes at
a small window, then check parity (1e-4) at the window plus one size step per axis.

    python benchmarks/onnx_free_size.py            # every network node in the catalogue, small configs
    python benchmarks/onnx_free_size.py UNet2D DynUNet

Prints a markdown table: network, window, the other size checked, free or fixed, and why.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# small configs: (config, window); 2-D networks at 64², 3-D at 32³ (SwinUNETR/UNETR need their img_size)
CASES = {
    "UNet2D": ({"in_channels": 1, "out_channels": 2, "base_channels": 8, "depth": 3}, (64, 64)),
    "UNet3D": ({"in_channels": 1, "out_channels": 2, "base_channels": 4, "depth": 3}, (32, 32, 32)),
    "AttentionUNet": ({"spatial_dims": 2, "in_channels": 1, "out_channels": 2}, (64, 64)),
    "VNet": ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2}, (32, 32, 32)),
    "SegResNet": ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "base_channels": 8}, (32, 32, 32)),
    "UNETR": ({"in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32], "hidden_size": 96, "mlp_dim": 192,
               "num_heads": 4, "feature_size": 8}, (32, 32, 32)),
    "SwinUNETR": ({"in_channels": 1, "out_channels": 2, "img_size": [64, 64, 64], "feature_size": 12}, (64, 64, 64)),
    "TransUNet": ({"in_channels": 1, "out_channels": 2, "img_size": 64}, (64, 64)),
    "DeepLabV3Plus": ({"in_channels": 1, "out_channels": 2}, (64, 64)),
    "DynUNet": ({"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3],
                 "strides": [1, 2, 2], "filters": [8, 16, 32]}, (32, 32, 32)),
}


def check(name: str, config: dict, window: tuple[int, ...], folder: Path) -> dict:
    from segflow.export.formats import export_model
    from segflow.networks.description import description_of
    from segflow.networks.factory import build_network
    from segflow.nodes import registry

    try:
        net = build_network(name, registry.get(name).Config.model_validate(config))
    except Exception as e:  # a config this script got wrong for a network: say so, go on
        return {"network": name, "window": window, "result": "not built", "why": str(e)[:120]}
    described = description_of(net)
    steps = described.size_divisors or (described.size_divisor,) * len(window)
    other = tuple(s + d for s, d in zip(window, steps))
    if described.fixed_size:
        return {"network": name, "window": window, "other": None, "result": "fixed",
                "why": f"takes exactly {list(described.fixed_size)} (img_size)"}
    started = time.perf_counter()
    try:
        export_model(net, "onnx", folder / f"{name}.onnx", (1, *window), other_size=other, log=lambda _m: None)
        result, why = "free", ""
    except ValueError as e:
        result, why = "fixed", str(e).splitlines()[0][:160]
    return {"network": name, "window": window, "other": other, "result": result, "why": why,
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(CASES)
    folder = Path(tempfile.mkdtemp(prefix="onnxsize-"))
    print("| network | window | checked also at | ONNX spatial axes | why |")
    print("|---|---|---|---|---|")
    for name in names:
        row = check(name, *CASES[name], folder)
        size = "x".join(map(str, row["window"]))
        other = "x".join(map(str, row["other"])) if row.get("other") else "-"
        print(f"| {name} | {size} | {other} | {row['result']} | {row['why']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
