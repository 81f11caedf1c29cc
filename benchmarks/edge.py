"""Edge numbers of an exported model: size, LiteRT speed, agreement, predict throughput, start-up.

    python benchmarks/edge.py --model saved_models/starqso-large/export [--n 2000] \
        [--reference ../shared/tools/edge_reference.py]

Prints the CPU (``lscpu``'s model name) and a table:

* size of each TFLite variant;
* cutouts/s of each variant on one CPU thread, batched (256), LiteRT only: the variants are
  timed in interleaved rounds (``--rounds``) and each keeps its best round, so that load from
  other processes on a shared machine hits them alike;
* with ``--reference``: the edge peer, a seed-sized full-integer int8 CNN (three residual
  blocks + a generator head, random weights) built at the model's input size by that script
  (``edge_reference.py SIZE OUT.tflite``), timed in the same rounds; then the ratios
  int8/fp32 and int8/reference;
* label agreement of each variant with the Keras model on ``--n`` simulated cutouts;
* ``starqso predict --runtime litert`` end to end (FITS reading included) on ``--n`` cutouts
  written to disk, rows/s;
* start-up: wall time of ``starqso predict --runtime litert`` on one cutout, in a fresh
  process (median of 3);
* with ``--parts`` (needs TensorFlow): where the int8 model's time goes, ms per batch of 256
  on one thread, timed in interleaved rounds beside the whole int8 model (and the reference):
  the float asinh stretch alone, the float photometry alone, and the int8 network behind
  them (generator, fusion classifier, head) fed already-scaled inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCH = 256


def cpu_name():
    """The CPU's model name as ``lscpu`` gives it (else /proc/cpuinfo, else platform)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                               env={**os.environ, "LC_ALL": "C"}).stdout.splitlines()
        for line in lines:
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_reference(script, size, folder):
    """The reference int8 CNN, built by ``script SIZE OUT.tflite`` in a fresh process."""
    path = pathlib.Path(folder) / f"edge_reference_{size}.tflite"
    subprocess.run([sys.executable, str(script), str(size), str(path)], check=True,
                   capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return path


def interleaved_best(calls, rounds):
    """Shortest wall time (s) of each ``{name: call}`` over ``rounds`` rounds, each round
    calling every one in turn, so that a drift of the machine's speed hits all alike."""
    best = dict.fromkeys(calls, np.inf)
    for _ in range(rounds):
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - began)
    return best


def throughputs(paths, images, rounds):
    """Best cutouts/s of each model over ``rounds`` interleaved rounds, one thread, batch 256.

    Returns ``{name: (rate, probabilities)}``.
    """
    from starqso.inference import LiteRTPredictor

    predictors = {}
    for name, path in paths.items():
        predictors[name] = LiteRTPredictor(path, num_threads=1)
        predictors[name](images[:BATCH])  # allocate for the batch shape
    outputs = {}
    usable = len(images) // BATCH * BATCH or len(images)

    def run(name):
        outputs[name] = np.concatenate([predictors[name](images[i:i + BATCH])
                                        for i in range(0, usable, BATCH)])

    best = interleaved_best({name: (lambda name=name: run(name)) for name in paths}, rounds)
    return {name: (usable / best[name], outputs[name]) for name in paths}


def _part_models(model_dir, images, folder):
    """TFLite files of the deployed model's parts: ``{name: path}`` (see ``--parts``)."""
    import keras

    import starqso.models  # noqa: F401  (registers the layers)
    from starqso.deploy.tflite import convert_tflite, int8_converter
    from starqso.models.classifiers import deployed_network
    from starqso.models.layers import ZeroNoise

    calibrated = keras.saving.load_model(model_dir / "starqso_classifier.keras", compile=False)
    model = calibrated.get_layer("starqso_classifier")
    if model.photometry is None:
        raise SystemExit(f"--parts needs a model with in-model photometry. Received: "
                         f"{model_dir}")
    size, trunk = model.image_size, model.generator.image_size
    margin = (size - trunk) // 2
    centre = images[:, margin:size - margin, margin:size - margin]
    paths = {}

    def convert(net, name, variant, calibration=None):
        net.export(str(folder / name), format="tf_saved_model", verbose=False)
        paths[name] = folder / f"{name}.tflite"
        paths[name].write_bytes(convert_tflite(folder / name, "fp32") if variant == "fp32"
                                else int8_converter(folder / name, calibration).convert())

    cut = keras.Input((trunk, trunk, 5), name="image")
    convert(keras.Model(cut, model.scaling(cut)), "float stretch (fp32)", "fp32")
    whole = keras.Input((size, size, 5), name="image")
    convert(keras.Model(whole, model.photometry(whole)), "float photometry (fp32)", "fp32")
    scaled = keras.Input((trunk, trunk, 5), name="scaled")
    measured = keras.Input((model.photometry.NUM_FEATURES,), name="photometry")
    network = deployed_network({"image": scaled, "photometry": measured},
                               ZeroNoise(model.generator.noise_dim)(scaled), model.generator,
                               model.fusion, (model.photometry_head, model.head_weight))
    net = keras.Model({"scaled": scaled, "photometry": measured}, network["p_qso"])
    stretched = np.asarray(model.scaling(centre[:200]))
    photometry = np.asarray(model.photometry(images[:200]))
    convert(net, "int8 network, no float parts", "int8",
            lambda: ({"scaled": stretched[i:i + 1], "photometry": photometry[i:i + 1]}
                     for i in range(len(stretched))))
    feeds = {"float stretch (fp32)": {"image": centre[:BATCH]},
             "float photometry (fp32)": {"image": images[:BATCH]},
             "int8 network, no float parts": {"scaled": np.asarray(model.scaling(centre[:BATCH])),
                                              "photometry": np.asarray(
                                                  model.photometry(images[:BATCH]))}}
    return paths, feeds


def part_timings(paths, feeds, rounds):
    """Best ms per batch of ``BATCH`` for each TFLite file, one thread, interleaved rounds."""
    from ai_edge_litert.interpreter import Interpreter

    runners = {}
    for name, path in paths.items():
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        for detail in interpreter.get_input_details():
            interpreter.resize_tensor_input(detail["index"], [BATCH, *detail["shape"][1:]])
        interpreter.allocate_tensors()
        inputs = []
        for detail in interpreter.get_input_details():
            # Signature input names may carry a prefix; match on the part's feed names.
            key = next(k for k in feeds[name] if k in detail["name"]) if len(
                feeds[name]) > 1 else next(iter(feeds[name]))
            value = feeds[name][key].astype(np.float32)
            if detail["dtype"] == np.int8:
                scale, zero = detail["quantization"]
                value = np.clip(np.round(value / scale + zero), -128, 127).astype(np.int8)
            inputs.append((detail["index"], value))
        runners[name] = (interpreter, inputs)
    def run(interpreter, inputs):
        for _ in range(4):
            for index, value in inputs:
                interpreter.set_tensor(index, value)
            interpreter.invoke()

    best = interleaved_best({name: (lambda runner=runner: run(*runner))
                             for name, runner in runners.items()}, rounds)
    return {name: seconds / 4 * 1e3 for name, seconds in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "saved_models/starqso-large/export"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=424242)
    parser.add_argument("--reference", default=None,
                        help="path to edge_reference.py (e.g. ../shared/tools/"
                             "edge_reference.py): time its int8 CNN beside the model")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved timing rounds; each model keeps its best")
    parser.add_argument("--skip-predict", action="store_true",
                        help="leave out the `starqso predict` end-to-end and start-up runs")
    parser.add_argument("--parts", action="store_true",
                        help="also time the int8 model's float stretch, float photometry and "
                             "int8 network separately (needs TensorFlow)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from starqso.inference import KerasPredictor
    from starqso.io import write_catalog, write_cutout
    from starqso.preprocessing import center_crop
    from starqso.simulate import simulate_object

    model_dir = pathlib.Path(args.model)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    size = metadata["input_shape"][1]
    threshold = metadata.get("threshold", 0.5)  # agreement on the label the model gives
    objects = [simulate_object(i, args.seed) for i in range(args.n)]
    images = np.stack([center_crop(obj.cutout, size) for obj in objects])
    keras_p = np.concatenate([KerasPredictor(model_dir)(images[i:i + 512])
                              for i in range(0, len(images), 512)])

    def labels(outputs):
        """The label each output gives: p(QSO) >= threshold, or a K-class model's
        class_decisions (QSO at the threshold, else the more probable other class)."""
        from starqso.probability import class_decisions

        outputs = np.asarray(outputs)
        return (class_decisions(outputs, threshold) if outputs.ndim == 2
                else (outputs >= threshold).astype(int))

    print(f"model {model_dir}, {args.n} simulated cutouts (seed {args.seed}), "
          f"CPU {cpu_name()} ({os.cpu_count()} cores), LiteRT on 1 thread, batch {BATCH}, "
          f"best of {args.rounds} interleaved rounds; label agreement at the model's threshold "
          f"{threshold:g}\n")
    paths = {variant: model_dir / f"model_{variant}.tflite" for variant in ("fp32", "fp16", "int8")}
    with tempfile.TemporaryDirectory() as scratch:
        if args.reference:
            paths["reference int8"] = build_reference(args.reference, size, scratch)
        results = throughputs(paths, images, args.rounds)
        sizes = {name: path.stat().st_size for name, path in paths.items()}
    print(f"| variant | size (kB) | cutouts/s, 1 thread, batch {BATCH} | "
          "label agreement with Keras |")
    print("|---|---|---|---|")
    for name, (rate, probabilities) in results.items():
        if name == "reference int8":
            agreement = "- (random weights)"
        else:
            compared = keras_p[:len(probabilities)]
            agreement = f"{np.mean(labels(probabilities) == labels(compared)):.4f}"
        print(f"| {name} | {sizes[name] / 1e3:.0f} | {rate:,.0f} | {agreement} |")
    int8 = results["int8"][0]
    print(f"\nint8 / fp32: {int8 / results['fp32'][0]:.2f}x")
    if "reference int8" in results:
        print(f"int8 / reference int8: {int8 / results['reference int8'][0]:.2f}x")
    if args.parts:
        with tempfile.TemporaryDirectory() as scratch:
            scratch = pathlib.Path(scratch)
            part_paths, feeds = _part_models(model_dir, images, scratch)
            whole = {"whole int8 model": paths["int8"]}
            feeds["whole int8 model"] = {"image": images[:BATCH]}
            if args.reference:
                whole["reference int8"] = build_reference(args.reference, size, scratch)
                feeds["reference int8"] = {"image": images[:BATCH]}
            timings = part_timings({**whole, **part_paths}, feeds, args.rounds)
        print(f"\n| part (1 thread) | ms per batch of {BATCH} | share of the whole int8 model |")
        print("|---|---|---|")
        for name, ms in timings.items():
            print(f"| {name} | {ms:.2f} | {ms / timings['whole int8 model']:.0%} |")
    if args.skip_predict:
        return

    with tempfile.TemporaryDirectory() as folder:
        folder = pathlib.Path(folder)
        (folder / "images").mkdir()
        for obj in objects:
            write_cutout(folder / "images" / f"{obj.id}.fits", obj.cutout)
        from astropy.table import Table

        write_catalog(Table({"id": [o.id for o in objects],
                             "image": [f"images/{o.id}.fits" for o in objects]}),
                      folder / "catalog.csv")
        write_catalog(Table({"id": [objects[0].id], "image": [f"images/{objects[0].id}.fits"]}),
                      folder / "one.csv")
        command = [sys.executable, str(ROOT / "cli.py"), "predict", "--model", str(model_dir),
                   "--runtime", "litert"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        began = time.perf_counter()
        subprocess.run(command + [str(folder / "catalog.csv"), "--output",
                                  str(folder / "p.csv")], check=True, env=env,
                       capture_output=True)
        end_to_end = args.n / (time.perf_counter() - began)
        startups = []
        for _ in range(3):
            began = time.perf_counter()
            subprocess.run(command + [str(folder / "one.csv"), "--output",
                                      str(folder / "one_p.csv")], check=True, env=env,
                           capture_output=True)
            startups.append(time.perf_counter() - began)
    print(f"\n`starqso predict --runtime litert` end to end (process start and FITS reading "
          f"included): {end_to_end:,.0f} cutouts/s over {args.n}")
    print(f"start-up, `starqso predict --runtime litert` on one cutout: "
          f"{np.median(startups):.2f} s (median of 3)")


if __name__ == "__main__":
    main()
