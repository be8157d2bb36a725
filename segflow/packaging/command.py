"""The `segflow package` and `segflow predict` commands: arguments in, exit status out."""
from __future__ import annotations

import sys
from pathlib import Path

from segflow.packaging.contents import PackageError


def add_parsers(sub, device_option) -> None:
    p = sub.add_parser("package", help="make a trained run a deliverable model (weights, exports, preprocessing)")
    p.add_argument("run_dir", help="a run directory (runs/<workflow>/<time>) whose Trainer finished")
    p.add_argument("-o", "--output", required=True, help="the package: a folder, or a .zip file")
    p.add_argument("--zip", action="store_true", help="write a zip file even when the name does not end in .zip")
    p.add_argument("--license", help="licence of the model (metadata.json 'license')")
    p.add_argument("--author", action="append", dest="authors", metavar="NAME", help="an author (repeatable)")
    p.add_argument("--model-version", default="1.0.0", help="the model's version (metadata.json 'version')")
    p.set_defaults(func=run_package)

    p = sub.add_parser("predict", help="predict every image in a folder with a package, run directory or checkpoint")
    p.add_argument("model", help="a package (folder or .zip), a run directory, or a checkpoint in one")
    p.add_argument("-i", "--input", required=True, help="folder of images (NIfTI, PNG/TIFF, DICOM series folders; "
                                                        "<case>_0000, <case>_0001 ... are the channels of one case)")
    p.add_argument("-o", "--output", required=True, help="folder for the predictions (made if missing)")
    p.add_argument("--device", type=device_option, help="auto, cpu, cuda or cuda:N (default: the package's, auto)")
    tta = p.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None, help="mirroring test-time augmentation")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")
    p.add_argument("--probabilities", action="store_true", help="also write <case>_probabilities.npy (float16)")
    p.add_argument("--overwrite", action="store_true", help="predict cases whose output exists again")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="torch (the weights, eager) or onnx (the package's model.onnx under onnxruntime)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)


def run_package(args) -> int:
    from segflow.packaging.build import make_package

    try:
        make_package(args.run_dir, args.output, as_zip=True if args.zip else None, license=args.license,
                     authors=args.authors, model_version=args.model_version)
    except PackageError as e:
        print(f"segflow package: {e}", file=sys.stderr)
        return 2
    return 0


def run_predict(args) -> int:
    from segflow.packaging.build import open_model
    from segflow.packaging.predict import predict_folder

    try:
        package = open_model(args.model)
        if not Path(args.input).is_dir():
            raise PackageError(f"-i {args.input}: not a folder of images")
        outcome = predict_folder(package, args.input, args.output, device=args.device, tta=args.tta,
                                 probabilities=args.probabilities, overwrite=args.overwrite, backend=args.backend,
                                 progress=not args.no_progress)
    except PackageError as e:
        print(f"segflow predict: {e}", file=sys.stderr)
        return 2
    print(outcome.summary())
    return 1 if outcome.failed else 0
