"""`dptrain saliency` and `dptrain visualize`: backpropagation to the data, from the terminal.

The server computes d(unit)/d(inputs) (the InputGradient rpc); `saliency` saves it for a
file of inputs, `visualize` climbs it from a blank input to the image that excites a
unit most (the lecture notes' neuron-visualisation example; docs/backprop.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .progress import console
from .remote import JOB_HELP, add_connection_args, client


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("saliency", help="gradients of a unit with respect to each input (.npz)")
    add_connection_args(p)
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("inputs", help=".npz whose array X (or its first array) holds the inputs")
    p.add_argument("-o", "--output", required=True, help=".npz to write: gradients, outputs")
    p.add_argument("--node", default="", help="node whose unit is differentiated (default: the output)")
    p.add_argument("--unit", type=int, help="unit index (default: each input's largest output unit)")
    p.set_defaults(func=saliency)

    p = sub.add_parser("visualize", help="optimise an input to excite one unit; write it as an image")
    add_connection_args(p)
    p.add_argument("job", help=JOB_HELP)
    p.add_argument("--node", default="", help="node whose unit to excite (default: the output)")
    p.add_argument("--unit", type=int, required=True, help="unit index in the node's flattened output")
    p.add_argument("-o", "--output", required=True, help=".png for image inputs (C in 1 or 3), else .npz")
    p.add_argument("--steps", type=int, default=200, help="gradient ascent steps (default 200)")
    p.add_argument("--lr", type=float, default=0.1, help="step size (default 0.1)")
    p.add_argument("--decay", type=float, default=0.01, help="L2 pull towards 0 per step (default 0.01)")
    p.set_defaults(func=visualize)


def saliency(args: argparse.Namespace) -> int:
    from dptrain.export import read_inputs

    X = read_inputs(args.inputs)
    with client(args) as c:
        g, out = c.input_gradient(c.resolve(args.job), X, args.node, args.unit)
    np.savez(args.output, gradients=g, outputs=out)
    console.print(f"wrote gradients {g.shape} and outputs {out.shape} to {args.output}")
    return 0


def visualize(args: argparse.Namespace) -> int:
    """x <- x + lr (d unit / dx - decay x), from 0: the input the unit likes best, kept small."""
    from dptrain.engine.spec import ModelSpec
    from dptrain.rpc import convert

    with client(args) as c:
        job_id = c.resolve(args.job)
        shape = ModelSpec.from_dict(convert.job_spec_to_dict(c.get(job_id).spec)["model"]).input.shape
        x = np.zeros((1, *shape), dtype=np.float32)
        for _ in range(args.steps):
            g, out = c.input_gradient(job_id, x, args.node, args.unit)
            x += args.lr * (g.astype(np.float32) - args.decay * x)
    value = float(out[0, args.unit])
    if Path(args.output).suffix.lower() == ".png" and len(shape) == 3 and shape[0] in (1, 3):
        save_png(args.output, x[0])
    else:
        np.savez(args.output, input=x[0])
    console.print(f"unit {args.unit} of {args.node or 'the output'}: {value:.4g} after {args.steps} steps; "
                  f"wrote {args.output}")
    return 0


def save_png(path: str, image: np.ndarray) -> None:
    """A (C, H, W) array, C 1 or 3, scaled to 0..255 over its own range (Pillow, `dptrain[images]`)."""
    try:
        from PIL import Image
    except ImportError:
        raise OSError("writing PNG needs Pillow: pip install 'dptrain[images]' (or give an .npz output)") from None
    lo, hi = float(image.min()), float(image.max())
    scaled = ((image - lo) / (hi - lo if hi > lo else 1.0) * 255).round().astype(np.uint8)
    pixels = scaled[0] if scaled.shape[0] == 1 else np.moveaxis(scaled, 0, -1)
    Image.fromarray(pixels).resize((pixels.shape[1] * 8, pixels.shape[0] * 8), Image.NEAREST).save(path)
