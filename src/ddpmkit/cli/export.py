"""``ddpmkit export``: write a model as a diffusers pipeline folder, where it has a faithful equivalent."""

from __future__ import annotations

import pathlib

from .common import FMT, MODEL_HELP, add_device, check_folder, check_writable

TARGETS = ("diffusers",)


def add_parser(sub) -> None:
    p = sub.add_parser("export", formatter_class=FMT, help="write a model for another library (diffusers)",
                       description="Write the model as a diffusers DDPMPipeline folder (model_index.json, unet/, "
                       "scheduler/) that DDPMPipeline.from_pretrained(OUT) loads: our U-Net relabelled as a "
                       "UNet2DModel (outputs equal to float32 round-off) and our schedule as a DDPMScheduler. A model "
                       "without a faithful equivalent (a consistency model, class labels, ...) is refused with the reason.")
    p.add_argument("--model", default="mnist", help=MODEL_HELP)
    p.add_argument("--to", required=True, choices=TARGETS, help="the library to export for")
    p.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    add_device(p)
    p.set_defaults(func=run)


def run(args) -> None:
    from ..export import export_diffusers
    from ..models import load_model

    out = pathlib.Path(args.out)
    check_folder("--out", args.out)
    check_writable(out, out.parent)  # before the model is loaded
    model = load_model(args.model, device=args.device)
    written = export_diffusers(model, out)
    print(f"wrote {args.model} as a diffusers DDPMPipeline to {written} "
          f"(load it with diffusers.DDPMPipeline.from_pretrained({str(written)!r}))")
