"""What files saved by the node editor name that segflow has in another form.

The node-graph editor the seed guide came from (GitHub Jin-Park-Elucid/Node-MedicalImaging-Framework)
has building blocks that pass tensors from node to node (an encoder's features into a decoder) and
ports that carry one forward pass. segflow's nodes hand on whole networks, loaders and prediction
sets, and run forward passes inside the Trainer and the Predictor, so these have no node or port of
their own: a file naming one gets an error that says what to use instead. The editor's other names
(node types, keys, ports) are aliases on the node types themselves; docs/workflow-format.md,
"Files from the node editor", has the whole table.
"""
from __future__ import annotations

from typing import Any

from segflow.nodes.base import Finding

# node type -> what to use instead
BUILDING_BLOCKS = {
    "ResNetEncoder2D": "use DeepLabV3Plus (a residual encoder with an atrous pyramid and a decoder, 2-D) or "
                       "SegResNet with spatial_dims 2",
    "ResNetEncoder3D": "use SegResNet (a residual encoder-decoder, 3-D)",
    "ResNetDecoder2D": "use DeepLabV3Plus, or SegResNet with spatial_dims 2: each holds its encoder and decoder",
    "TransformerEncoder": "use UNETR (a transformer encoder with a convolutional decoder, num_layers sets its "
                          "layers) or TransUNet (2-D, a transformer bottleneck)",
    "VisionTransformer2D": "use TransUNet (2-D) or UNETR with spatial_dims 2: segmentation networks built on a "
                           "vision transformer",
}

BLOCK_MESSAGE = ("{type!r} is a building block of the node editor, which passes tensors from node to node; "
                 "segflow's network nodes are whole networks")

# (node type or family, "input" / "output", port) -> what to do instead
TENSOR_PORTS = {
    ("networks", "input", "input"): "a network node hands on the model itself: link its 'model' output to a Trainer "
                                    "or a Predictor, which run the forward passes on a loader's batches",
    ("networks", "output", "output"): "a network node hands on the model itself ('model'); predictions come from a "
                                      "Predictor fed that model and a loader",
    ("Predictor", "input", "input"): "a Predictor takes a loader ('loader', e.g. a loader's val_loader) and predicts "
                                     "every case of it",
    ("Predictor", "output", "probabilities"): "set save_probabilities: true to write each case's class "
                                              "probabilities next to its prediction ('predictions' holds them all)",
}

TENSOR_MESSAGE = "{type} node {node!r} has no {kind} {port!r}: in the node editor it carried a tensor"


def tensor_port_advice(type_name: str, family: str, kind: str, port: str) -> str | None:
    """What to do instead of linking the editor's tensor port `port` (kind "input" or "output"), or
    None when `port` is not one."""
    return TENSOR_PORTS.get((type_name, kind, port)) or TENSOR_PORTS.get((family, kind, port))


# Networks whose `depth` the node editor counted in downsamplings (its depth 4: five levels);
# segflow counts levels, the bottleneck included (depth 5: four downsamplings), as MONAI's channels do.
DEPTH_IN_DOWNSAMPLINGS = ("UNet2D", "UNet3D", "AttentionUNet")


def from_editor(raw_node: dict, type_name: str, canonical: str) -> bool:
    """Whether a node entry looks saved by the node editor: it always writes `is_composite`, and its
    older files name types by class (`UNet2DNode`)."""
    return "is_composite" in raw_node or type_name != canonical


def saved_node_findings(type_name: str, config: Any) -> list[Finding]:
    """Warnings for a node the node editor saved, where its key means something else in segflow."""
    if type_name in DEPTH_IN_DOWNSAMPLINGS and "depth" in config.model_fields_set:
        d = config.depth
        return [Finding("depth", "editor_depth", f"depth {d} builds {d} levels here ({d - 1} downsamplings); the node "
                        f"editor's depth counted downsamplings, so its depth {d} had {d + 1} levels",
                        hint=f"set depth to {d + 1} for the editor's network, or keep {d} for the smaller one",
                        severity="warning")]
    return []
