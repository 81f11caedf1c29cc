"""Give export folders made before embeddings their ``embedding_reference.npz``.

    python benchmarks/embedding_reference.py \\
        --arrays SIMCACHE/simulation-HASH.npz --split RUN/split.json \\
        MODEL_DIR [MODEL_DIR ...]

The reference of ``starqso embed``'s outlier score is the embeddings of (up to 5,000) of the
run's training objects, as ``starqso export`` writes it for a new model
(:func:`starqso.discovery.embed.add_embedding_reference`). ``--arrays`` is the
``--simulation-cache``
file of the run's ``starqso fit`` and ``--split`` its ``split.json``; the model files are not
touched, ``metadata.json`` gains ``embedding`` and the file's SHA-256.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from quality_flags import load_split  # noqa: E402 - the same reader of the run's split


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrays", required=True)
    parser.add_argument("--split", required=True)
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from starqso.discovery.embed import add_embedding_reference

    images = load_split(args.arrays, args.split)["train"].images
    for folder in args.folders:
        info = add_embedding_reference(folder, images)
        print(f"{folder}: {info['rows']} training objects, spaces {info['spaces']}")


if __name__ == "__main__":
    main()
